"""Model weights: find them locally or download them, and never use a file whose sha256 differs from
the card's.

Where weights are looked for, in order:
1. ``file:relative/path`` in the card: a file committed beside the card (the shipped ct-lung-nodule);
2. the offline directory the user points at (``--weights-dir`` / ``MEDIMGAI_WEIGHTS_DIR``), holding
   ``<weights.filename>`` (what a site copies in when the workstation has no network);
3. the cache (``MEDIMGAI_CACHE``, default ``~/.cache/medimgai``): ``weights/<id>/<version>/<filename>``;
4. the card's URL (http(s) or file://), downloaded with progress into the cache under a temporary name,
   checked, then renamed. ``MEDIMGAI_OFFLINE=1`` forbids this step.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Optional

from ..errors import WeightsError
from .card import ModelCard, WeightsSpec

#: progress(done_bytes, total_bytes)
ByteProgress = Callable[[int, int], None]

_CHUNK = 1 << 20


def cache_dir() -> Path:
    return Path(os.environ.get("MEDIMGAI_CACHE") or Path.home() / ".cache" / "medimgai")


def weights_dir_from_env() -> Optional[Path]:
    d = os.environ.get("MEDIMGAI_WEIGHTS_DIR")
    return Path(d) if d else None


def offline_from_env() -> bool:
    return os.environ.get("MEDIMGAI_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, spec: WeightsSpec, model_id: str, origin: str) -> Path:
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise WeightsError(
            f"weights for {model_id} from {origin} ({path}) have sha256 {actual}, the card expects "
            f"{spec.sha256}: refusing to use them (a corrupted, truncated or different file). "
            f"Delete it and fetch again from {spec.url}"
        )
    return path


def _card_relative(card: ModelCard, url: str) -> Optional[Path]:
    """``file:relative/path`` (no ``//``) -> path next to the card."""
    if url.startswith("file:") and not url.startswith("file://"):
        rel = url[len("file:") :]
        base = Path(card.path).parent if card.path else Path.cwd()
        return (base / rel).resolve()
    return None


def cached_path(card: ModelCard) -> Path:
    assert card.weights is not None
    return cache_dir() / "weights" / card.id / card.version / card.weights.filename


def _offline_message(card: ModelCard, weights_dir: Optional[Path], reason: str) -> str:
    spec = card.weights
    assert spec is not None
    where = weights_dir or cached_path(card).parent
    return (
        f"weights for model {card.id} {card.version} are not available offline ({reason}). "
        f"Download {spec.url} ({spec.size_bytes} bytes, sha256 {spec.sha256}, licence {spec.licence}) "
        f"on a machine with network access and copy it as {where / spec.filename} "
        f"(or into any directory given by --weights-dir / MEDIMGAI_WEIGHTS_DIR), "
        f"or run `medimgai models fetch {card.id}` where there is network access"
    )


def download(url: str, dest: Path, *, expected_size: int = 0, progress: Optional[ByteProgress] = None,
             show_progress: bool = False, timeout_s: float = 30.0) -> Path:
    """Stream ``url`` to ``dest`` via a temporary file in the same directory (atomic rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    bar = None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or expected_size or 0)
            if show_progress:
                from tqdm import tqdm

                bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name, leave=False)
            done = 0
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                if progress is not None:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return dest


def resolve_weights(
    card: ModelCard,
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    offline: Optional[bool] = None,
    progress: Optional[ByteProgress] = None,
    show_progress: bool = False,
) -> Path:
    """The verified local path of the card's weights, downloading them if needed and allowed."""
    spec = card.weights
    if spec is None:
        raise WeightsError(f"model {card.id} has no weights section in its card")
    wdir = Path(weights_dir) if weights_dir else weights_dir_from_env()
    offline = offline_from_env() if offline is None else offline

    local = _card_relative(card, spec.url)
    if local is not None:
        if not local.is_file():
            raise WeightsError(f"weights for {card.id} should be committed at {local} (card url {spec.url}), but the file is missing")
        return _verify(local, spec, card.id, "the repository")

    if wdir is not None:
        candidate = wdir / spec.filename
        if candidate.is_file():
            return _verify(candidate, spec, card.id, f"weights directory {wdir}")

    cached = cached_path(card)
    if cached.is_file():
        return _verify(cached, spec, card.id, "the cache")

    if offline:
        raise WeightsError(_offline_message(card, wdir, "offline mode (MEDIMGAI_OFFLINE / --offline)"))
    scheme = urllib.parse.urlparse(spec.url).scheme
    if scheme not in ("http", "https", "file"):
        raise WeightsError(f"model {card.id}: weights url {spec.url!r} has unsupported scheme {scheme!r}")
    try:
        download(spec.url, cached, expected_size=spec.size_bytes, progress=progress, show_progress=show_progress)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(_offline_message(card, wdir, f"download failed: {reason}")) from None
    try:
        return _verify(cached, spec, card.id, f"download from {spec.url}")
    except WeightsError:
        cached.unlink(missing_ok=True)  # never leave a bad file in the cache looking usable
        raise


def extract_archive(archive: Path, sha256: str) -> Path:
    """Unpack a verified zip (a MONAI bundle) once, beside itself, keyed by its hash; returns the
    directory holding the bundle (the zip's single top-level directory when it has one)."""
    target = archive.parent / f".{archive.stem}-{sha256[:12]}"
    if not target.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=archive.parent))
        try:
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():  # refuse path traversal
                    p = (tmp / name).resolve()
                    if not str(p).startswith(str(tmp.resolve())):
                        raise WeightsError(f"archive {archive} holds an unsafe path {name!r}")
                zf.extractall(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return target
