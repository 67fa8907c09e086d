"""Rule-set files: what ships is complete and documented; a broken file is refused with its name and field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

from MedImgAILib.errors import ContentError, RuleError
from MedImgAILib.rules import list_rule_sets, load_rule_set, load_rule_set_file, rules_dir


def test_shipped_rule_sets():
    sets = {rs.id: rs for rs in list_rule_sets()}
    assert set(sets) == {"lung-rads", "fleischner-2017"}
    assert sets["lung-rads"].version == "v2022" and sets["fleischner-2017"].version == "2017"
    for rs in sets.values():
        assert rs.source and rs.effective and rs.changelog and rs.title
        assert rs.measurement.description and rs.applicability.description and rs.study.description
        assert all(r.source for r in rs.rows), "every row names its place in the published table"
        used = {r.category for r in rs.rows} | {u.to for u in rs.upgrades}
        used |= {v for v in (rs.study.no_findings, rs.study.incomplete) if v}
        assert used == {c.value for c in rs.categories}, "every category is reachable"
        ranks = [c.rank for c in rs.categories]
        assert len(ranks) == len(set(ranks)), "ranks order the categories strictly"


def test_lung_rads_category_ranks_follow_the_guideline():
    rs = load_rule_set("lung-rads")
    assert sorted(rs.categories, key=lambda c: c.rank)[1:] == [rs.category(v) for v in ("1", "2", "3", "4A", "4B", "4X")]


def test_load_by_id_version_and_path():
    assert load_rule_set("lung-rads", "v2022").version == "v2022"
    assert load_rule_set("lung-rads@v2022").id == "lung-rads"
    path = rules_dir() / "fleischner-2017.yaml"
    assert load_rule_set(path).id == "fleischner-2017"


def test_unknown_rule_set_names_the_available_ones():
    with pytest.raises(RuleError, match=r"no rule set 'lung-rads@v1\.1'.*lung-rads@v2022"):
        load_rule_set("lung-rads", "v1.1")
    with pytest.raises(RuleError, match="fleischner-2017@2017"):
        load_rule_set("brock")


# ---- validation errors name the file and the field -------------------------------------------------------


@pytest.fixture
def lung_rads_data() -> dict:
    return yaml.load((rules_dir() / "lung-rads-v2022.yaml").read_text(), Loader=_LOADER)


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "broken.yaml"
    p.write_text(yaml.dump(data, Dumper=_DUMPER, sort_keys=False) if not isinstance(data, str) else data)
    return p


def _bad(data: dict, mutate) -> dict:
    data = copy.deepcopy(data)
    mutate(data)
    return data


BROKEN = [
    ("missing source", lambda d: d.pop("source"), r"field source: Field required"),
    ("missing effective date", lambda d: d.pop("effective"), r"field effective"),
    ("bad effective date", lambda d: d.update(effective="November 2022"), r"field effective"),
    ("no changelog", lambda d: d.update(changelog=[]), r"field changelog"),
    ("wrong schema", lambda d: d.update(schema="medimgai.rules/0"), r"field schema"),
    ("bad id", lambda d: d.update(id="Lung RADS"), r"field id: .*lower-case"),
    ("rounding", lambda d: d["measurement"].update(rounding="banker"), r"field measurement\.rounding"),
    ("range upside down", lambda d: d["rows"][5]["when"].update(mean_diameter_mm={"gte": 15.0, "lt": 8.0}),
     r"field rows\.5\.when\.mean_diameter_mm: .*lower bound 15\.0 is not below upper bound 8\.0"),
    ("both gte and gt", lambda d: d["rows"][5]["when"].update(mean_diameter_mm={"gte": 8.0, "gt": 8.0}),
     r"rows\.5\.when\.mean_diameter_mm: .*either gte or gt"),
    ("empty range", lambda d: d["rows"][5]["when"].update(mean_diameter_mm={}), r"rows\.5\.when\.mean_diameter_mm: .*at least one bound"),
    ("typo in condition", lambda d: d["rows"][5]["when"].update(mean_diameter={"gte": 8.0}),
     r"rows\.5\.when\.mean_diameter: Extra inputs are not permitted"),
    ("unknown nodule type", lambda d: d["rows"][5]["when"].update(nodule_type=["calcified"]), r"rows\.5\.when\.nodule_type\.0"),
    ("non-numeric bound", lambda d: d["rows"][5]["when"].update(mean_diameter_mm={"lt": "eight"}), r"rows\.5\.when\.mean_diameter_mm\.lt"),
    ("row without source", lambda d: d["rows"][5].pop("source"), r"rows\.5\.source: Field required"),
    ("undefined category", lambda d: d["rows"][5].update(category="5"), r"rows\.5 \(lr-solid-baseline-4A\): category '5' is not one of"),
    ("duplicate row id", lambda d: d["rows"][6].update(id=d["rows"][5]["id"]), r"row ids used twice"),
    ("duplicate category", lambda d: d["categories"].append(dict(d["categories"][3])), r"category values defined twice: \['3'\]"),
    ("follow-up range upside down", lambda d: d["categories"][3].update(follow_up_months=6, follow_up_months_max=3),
     r"categories\.3: .*follow_up_months_max"),
    ("upgrade to undefined", lambda d: d["upgrades"][0].update(to="5"), r"upgrades\.0: category '5'"),
    ("study default undefined", lambda d: d["study"].update(no_findings="N"), r"study\.no_findings: category 'N'"),
    ("screening mode", lambda d: d["applicability"].update(screening="maybe"), r"applicability\.screening"),
    ("unknown flag", lambda d: d["rows"][0]["when"].update(flags=["calcified"]), r"rows\.0 \(lr-benign-calcification\): unknown flag"),
]


@pytest.mark.parametrize("what,mutate,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_invalid_rule_set_is_refused_naming_file_and_field(tmp_path, lung_rads_data, what, mutate, message):
    path = _write(tmp_path, _bad(lung_rads_data, mutate))
    with pytest.raises(ContentError, match=message) as info:
        load_rule_set_file(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_not_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "id: x\nsource: a: b\n")
    with pytest.raises(ContentError, match=r"broken\.yaml: not valid YAML at line 2"):
        load_rule_set_file(path)


def test_not_a_mapping(tmp_path):
    with pytest.raises(ContentError, match="expected a mapping"):
        load_rule_set_file(_write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ContentError, match="cannot be read"):
        load_rule_set_file(tmp_path / "nope.yaml")


def test_a_site_library_via_MEDIMGAI_RESOURCES(tmp_path, monkeypatch, lung_rads_data):
    site = tmp_path / "res" / "rules"
    site.mkdir(parents=True)
    data = _bad(lung_rads_data, lambda d: d.update(version="v2022-site", effective="2025-01-01"))
    (site / "lung-rads-site.yaml").write_text(yaml.dump(data, Dumper=_DUMPER, sort_keys=False))
    monkeypatch.setenv("MEDIMGAI_RESOURCES", str(tmp_path / "res"))
    assert load_rule_set("lung-rads").version == "v2022-site"
    # a broken file in the library is an error, not a silently missing rule set
    (site / "zz-broken.yaml").write_text("schema: medimgai.rules/1\n")
    with pytest.raises(ContentError, match="zz-broken.yaml: field id"):
        list_rule_sets()


def test_the_same_id_and_version_twice_is_refused(tmp_path, monkeypatch, lung_rads_data):
    site = tmp_path / "rules"
    site.mkdir()
    for name in ("a.yaml", "b.yaml"):
        (site / name).write_text(yaml.dump(lung_rads_data, Dumper=_DUMPER, sort_keys=False))
    monkeypatch.setenv("MEDIMGAI_RESOURCES", str(tmp_path))
    with pytest.raises(ContentError, match="lung-rads version v2022 is defined by more than one file"):
        list_rule_sets()
