"""Model cards and weights: validation that names file and field, sha256 refusal, the cache, the
offline directory, and downloads from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from MedImgAILib.errors import ContentError, WeightsError
from MedImgAILib.models import get_card, list_cards, load_card, resolve_weights
from MedImgAILib.models.registry import ModelNotFoundError

from . import tiny_models as tm


def test_shipped_cards_validate():
    cards = {c.id: c for c in list_cards()}
    assert "ct-lung-nodule" in cards
    c = cards["ct-lung-nodule"]
    assert c.not_for_clinical_use and any("synthetic" in lim.lower() for lim in c.limitations)
    assert c.weights is not None and c.weights.url.startswith("file:")
    assert c.labels[0].type.value == "27925004"  # SNOMED CT "Nodule"


def test_card_errors_name_the_file_and_the_field(tmp_path):
    d = tm.card_dict("bad-card", "native", settings={"network": "x:y"})
    d["input"]["orientation"] = "LPX"
    d["labels"][0]["color_rgb"] = [300, 0, 0]
    d["runner"]["sliding_window"]["overlapp"] = 0.5
    p = tm.write_card(tmp_path, d)
    with pytest.raises(ContentError) as err:
        load_card(p)
    msg = str(err.value)
    assert str(p) in msg
    assert "input.orientation" in msg and "labels.0.color_rgb" in msg and "runner.sliding_window.overlapp" in msg


def test_registry_finds_cards_by_id_and_reports_unknown_ids(tmp_path, monkeypatch):
    w = tm.make_state_dict(tmp_path / "w.pt")
    tm.write_card(tmp_path, tm.card_dict("site-model", "native", settings={"network": "a:b"}, weights=w))
    monkeypatch.setenv("MEDIMGAI_MODELS_PATH", str(tmp_path))
    assert get_card("site-model").id == "site-model"
    with pytest.raises(ModelNotFoundError, match="site-model"):
        get_card("nope")


def _card_with(tmp_path: Path, url: str, weights: Path, sha: str | None = None):
    d = tm.card_dict("tiny-native", "native", settings={"network": "Testing.inference.tiny_models:ThresholdNet"},
                     weights=weights, url=url)
    if sha:
        d["weights"]["sha256"] = sha
    cards = tmp_path / "cards"
    cards.mkdir(exist_ok=True)
    return load_card(tm.write_card(cards, d))


def test_file_url_download_is_cached_and_verified(isolated_env):
    w = tm.make_state_dict(isolated_env / "src.pt")
    card = _card_with(isolated_env, w.resolve().as_uri(), w)
    got = resolve_weights(card)
    assert got.is_relative_to(isolated_env / "cache") and got.read_bytes() == w.read_bytes()
    w.unlink()  # second time: from the cache, no source needed
    assert resolve_weights(card) == got


def test_sha256_mismatch_is_refused_and_not_cached(isolated_env):
    w = tm.make_state_dict(isolated_env / "src.pt")
    card = _card_with(isolated_env, w.resolve().as_uri(), w, sha="0" * 64)
    with pytest.raises(WeightsError) as err:
        resolve_weights(card)
    msg = str(err.value)
    assert "0" * 64 in msg and tm.sha256(w) in msg and "refusing" in msg
    assert not list((isolated_env / "cache").rglob("*.pt"))


def test_tampered_file_in_weights_dir_is_refused(isolated_env):
    w = tm.make_state_dict(isolated_env / "src.pt")
    card = _card_with(isolated_env, "https://models.invalid/src.pt", w)
    wd = isolated_env / "offline"
    wd.mkdir()
    (wd / "src.pt").write_bytes(w.read_bytes() + b"x")
    with pytest.raises(WeightsError, match="weights directory"):
        resolve_weights(card, weights_dir=wd, offline=True)


def test_offline_directory_and_the_message_when_weights_are_missing(isolated_env, monkeypatch):
    w = tm.make_state_dict(isolated_env / "src.pt")
    card = _card_with(isolated_env, "https://models.invalid/tiny/src.pt", w)
    monkeypatch.setenv("MEDIMGAI_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        resolve_weights(card)
    msg = str(err.value)
    # says what to download, from where, how big, and where to put it
    assert "https://models.invalid/tiny/src.pt" in msg and str(card.weights.size_bytes) in msg
    assert "MEDIMGAI_WEIGHTS_DIR" in msg and card.weights.sha256 in msg
    wd = isolated_env / "offline"
    wd.mkdir()
    shutil.copy(w, wd / "src.pt")
    monkeypatch.setenv("MEDIMGAI_WEIGHTS_DIR", str(wd))
    assert resolve_weights(card) == wd / "src.pt"


def test_unreachable_url_says_what_to_download_where(isolated_env):
    w = tm.make_state_dict(isolated_env / "src.pt")
    card = _card_with(isolated_env, "http://127.0.0.1:9/none/src.pt", w)  # discard port: refused
    with pytest.raises(WeightsError, match="download failed.*Download http://127.0.0.1:9/none/src.pt"):
        resolve_weights(card)


@pytest.fixture()
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_http_download_with_progress(isolated_env, http_server):
    root, base = http_server
    w = tm.make_state_dict(root / "tiny.pt")
    card = _card_with(isolated_env, f"{base}/tiny.pt", w)
    seen = []
    got = resolve_weights(card, progress=lambda done, total: seen.append((done, total)))
    assert got.read_bytes() == w.read_bytes()
    assert seen[-1] == (w.stat().st_size, w.stat().st_size)


def test_http_download_of_a_different_file_is_refused(isolated_env, http_server):
    root, base = http_server
    w = tm.make_state_dict(isolated_env / "tiny.pt")
    (root / "tiny.pt").write_bytes(b"not the weights")
    card = _card_with(isolated_env, f"{base}/tiny.pt", w)
    with pytest.raises(WeightsError, match="refusing"):
        resolve_weights(card)


def test_committed_file_weights_resolve_beside_the_card():
    card = get_card("ct-lung-nodule")
    p = resolve_weights(card, offline=True)
    assert p.is_file() and p.stat().st_size == card.weights.size_bytes <= 10 * 1024 * 1024
