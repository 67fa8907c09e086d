# The two commands a newcomer types (README.md): `make demo` and `make test`.
# Both bootstrap .venv. torch==2.13.0 goes in first: it is the CPU build that lies on this kind of
# machine's disk, and with it installed the library's range `torch>=2.4` pulls nothing more.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.medimgai-installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[slicer,test]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/medimgai demo

test: venv
	VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow $(PY) -m pytest Testing

bench: venv
	$(PY) -m Testing.benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache
