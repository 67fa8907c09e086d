"""The analysis loop, composed from the stages: source -> series -> protocol check -> model -> findings
-> priors -> rules -> SEG/SR/key images -> sink -> tracking.

``analyze()`` is what the CLI (``medimgai analyze``), the listener (a study completed) and the Slicer
module (through the worker process) call. Everything is built in a hidden work folder inside the output
folder and moved into place only when every stage has succeeded, findings.json last; a failing stage
leaves ``error.json`` (stage, kind, message) and no result that could be mistaken for a final one.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from .errors import CancelledError, MedImgAIError, ModelError, NoSeriesFoundError
from .results import AnalysisResult, ModelRef
from .volume import Volume

log = logging.getLogger(__name__)

#: progress(fraction 0..1, message)
Progress = Callable[[float, str], None]

#: rule sets applied to findings of a model, by the model card's anatomic region (SNOMED code value)
DEFAULT_RULE_SETS = {"39607008": ["lung-rads", "fleischner-2017"]}  # Lung


#: nice value of the background threads: on a busy machine inference keeps the cores it wants and the
#: side work takes what is left. (It does not help against the GIL: scipy.ndimage, most of the image-
#: quality work, holds it, and inference's Python-level steps then wait; see docs/pipeline.md.)
BACKGROUND_NICE = 10


def _lower_thread_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: a thread id is a valid PRIO_PROCESS
    target and only that thread changes). Elsewhere, or when not permitted, the thread runs as is."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), BACKGROUND_NICE))
    except (AttributeError, OSError):
        pass


class _Background:
    """One piece of work on a daemon thread; ``result()`` joins it and re-raises its exception in the
    caller, so that an error surfaces in the stage that needs the result. ``run_s`` is the work's own
    duration, ``wait_s`` how long ``result()`` waited for it (its cost on the critical path)."""

    def __init__(self, name: str, fn: Callable[[], Any], start: bool = True) -> None:
        self._fn = fn
        self._value: Any = None
        self._error: Optional[BaseException] = None
        self.run_s = 0.0
        self.wait_s = 0.0
        self._thread = threading.Thread(target=self._run, name=f"medimgai-{name}", daemon=True)
        self._started = start
        self._done = False
        if start:
            self._thread.start()

    def _run(self) -> None:
        if self._started:
            _lower_thread_priority()
        t0 = time.perf_counter()
        try:
            self._value = self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that needs the result
            self._error = exc
        finally:
            self.run_s = time.perf_counter() - t0

    def start(self) -> None:
        """Start a job made with ``start=False`` on its thread (later than its creation)."""
        if not self._started:
            self._started = True
            self._thread.start()

    def join(self) -> None:
        """Wait for a started job without taking its result (or error)."""
        if self._started:
            self._thread.join()

    def result(self) -> Any:
        t0 = time.perf_counter()
        if self._started:
            self._thread.join()
            self.wait_s += time.perf_counter() - t0
        elif not self._done:  # not started (overlap off): run in the caller, once
            self._run()
        self._done = True
        if self._error is not None:
            raise self._error
        return self._value


class PipelineError(MedImgAIError):
    kind = "pipeline"

    def __init__(self, message: str, stage: str = "") -> None:
        super().__init__(message)
        self.stage = stage


@dataclass
class AnalysisOptions:
    model_id: Optional[str] = None  # None: chosen by matching the series against the model cards
    series_uid: Optional[str] = None
    device: Optional[str] = None
    weights_dir: Optional[str] = None
    context: dict[str, Any] = field(default_factory=dict)  # explicit rule context (wins over headers)
    protocol_id: Optional[str] = None
    policy: Optional[Any] = None  # protocols.ConformancePolicy; default: analyze with a warning
    key_images: bool = True
    send_to: Optional[str] = None  # PACS node (name or AET@host:port) for SEG/SR/key images
    pacs_settings: Optional[Any] = None  # pacs.PacsSettings
    store: Optional[Any] = None  # tracking.ResultStore: priors in, result out
    site: str = ""
    observer: Optional[str] = None  # a radiologist confirming; None = the device alone
    #: run work that does not need the model output on background threads: the image-quality
    #: measures beside inference (when the policy can refuse on them; otherwise they follow the
    #: stored result), the NIfTI maps beside the key images. False runs every stage in turn.
    overlap: bool = True


@dataclass
class _Run:
    out: Path
    work: Path
    progress: Optional[Progress]
    cancel: Optional[threading.Event]
    timings: dict[str, float] = field(default_factory=dict)
    stage: str = "start"
    t0: float = field(default_factory=time.perf_counter)
    #: result objects already stored to the PACS (an error after the send must say so)
    sent: list[str] = field(default_factory=list)
    #: the cyclic garbage collector was enabled when the run started and is paused until the result
    #: is stored (:func:`_pause_collector`)
    collector_paused: bool = False

    def resume_collector(self) -> None:
        if self.collector_paused:
            self.collector_paused = False
            gc.enable()

    @contextmanager
    def step(self, name: str, fraction: float, message: str) -> Iterator[None]:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError(f"analysis cancelled before {name}")
        self.stage = name
        if self.progress:
            self.progress(fraction, message)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# source
# --------------------------------------------------------------------------------------------------
def parse_pacs_source(source: str) -> Optional[tuple[str, str]]:
    """``NODE:STUDY_UID`` (NODE a configured name or AET@host:port) -> (node, study uid); else None."""
    if os.path.exists(source) or ":" not in source:
        return None
    node, _, uid = source.rpartition(":")
    if node and uid and all(c.isdigit() or c == "." for c in uid):
        return node, uid
    return None


def _retrieve(node_spec: str, study_uid: str, dest: Path, opts: AnalysisOptions, run: _Run) -> Path:
    from .pacs.client import retrieve
    from .pacs.settings import load_settings

    settings = opts.pacs_settings or load_settings()
    node = settings.node(node_spec)

    reported = [-1]  # the last 5 % step reported: a line per instance would flood a terminal or log

    def on_progress(done: int, total: int) -> None:
        if not (run.progress and total):
            return
        step = 20 * done // total
        if step != reported[0]:
            reported[0] = step
            run.progress(0.02 + 0.13 * done / total, f"retrieved {done}/{total} instances from {node}")

    res = retrieve(node, settings, study_uid, dest, on_progress=on_progress, cancel=run.cancel)
    if not res.complete:
        raise PipelineError(
            f"retrieval of study {study_uid} from {node} is incomplete ({res.received} of {res.expected} instances"
            f"{'; ' + res.errors[0] if res.errors else ''}); nothing was analysed", stage="retrieve")
    return Path(res.out_dir)


def select_series(source: Path, card_modality: Optional[str], series_uid: Optional[str]) -> Any:
    """The series to analyse: the one asked for, else the image series of the model's modality with the
    most slices (thin reconstructions carry more information than thick ones of the same study)."""
    from .dicom.scan import scan, select_series as pick

    refs = [r for r in scan(source) if r.is_image]
    if series_uid:
        return pick(refs, series_uid, str(source))
    candidates = [r for r in refs if not card_modality or (r.modality or "").upper() == card_modality.upper()]
    if not candidates:
        found = ", ".join(sorted({r.modality or "?" for r in refs})) or "no image series"
        raise NoSeriesFoundError(f"{source} holds no {card_modality or 'image'} series to analyse (found: {found})")
    return max(candidates, key=lambda r: len(r.slices))


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
def analyze(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: Optional[AnalysisOptions] = None,
    progress: Optional[Progress] = None,
    cancel: Optional[threading.Event] = None,
) -> AnalysisResult:
    opts = options or AnalysisOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "error.json").unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=out))
    run = _Run(out=out, work=work, progress=progress, cancel=cancel)
    _pause_collector(run)
    try:
        result = _analyze(str(source), opts, run)
        _flush_work(run)
        result.timings_s = {k: round(v, 4) for k, v in run.timings.items()}
        result.timings_s["total"] = round(time.perf_counter() - run.t0, 4)
        _promote(run, result)
        if progress:
            progress(1.0, f"done: {len(result.findings)} finding(s)")
        return result
    except BaseException as exc:
        _write_error(out, run.stage, exc, run.sent, opts.send_to)
        raise
    finally:
        run.resume_collector()
        shutil.rmtree(work, ignore_errors=True)


def _pause_collector(run: _Run) -> None:
    """Pause Python's cyclic garbage collector from the start of a run until its SEG and SR are
    stored. A process that has run the model holds ~600k objects (torch, MONAI, highdicom), and a
    full collection, which the interpreter starts whenever enough objects have been allocated, then
    takes ~0.2 s wherever it falls: in one run of three it fell on the way to the result. Arrays are
    freed by reference counting as before; only reference cycles wait, and are collected once the
    result is stored. The collector is resumed also when the run fails."""
    if gc.isenabled():
        gc.disable()
        run.collector_paused = True


def _write_error(out: Path, stage: str, exc: BaseException, sent: Sequence[str] = (), node: Optional[str] = None) -> None:
    kind = getattr(exc, "kind", type(exc).__name__)
    message = str(exc) if isinstance(exc, MedImgAIError) else f"{type(exc).__name__}: {exc}"
    record: dict[str, Any] = {"schema": "medimgai.error/1", "stage": stage, "kind": kind, "message": message,
                              "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if sent:  # the SEG and SR go to the PACS before the key images: say what a reader may already see there
        record["already_stored"] = {"node": node, "objects": list(sent)}
    from .fileio import atomic_output

    with atomic_output(out / "error.json", "w") as fh:
        json.dump(record, fh, indent=2)


def _flush_work(run: _Run) -> None:
    """One flush makes every output in the work folder durable (the DICOM objects were written
    without their own fsync, the NIfTI maps by nibabel). Timed as the "promote" stage."""
    from .fileio import flush_filesystem

    t0 = time.perf_counter()
    # the file list is walked only where syncfs is missing (the per-file fallback)
    flush_filesystem(run.work, (p for p in run.work.rglob("*") if p.is_file()))
    run.timings["promote"] = time.perf_counter() - t0


def _promote(run: _Run, result: AnalysisResult) -> None:
    """Move the finished (and flushed: :func:`_flush_work`) outputs from the work folder into the
    output folder, findings.json last: a crash leaves the old result or the complete new one, never
    files that are named but not on disk."""
    out, work = run.out, run.work
    for name in ("findings.json",):
        (out / name).unlink(missing_ok=True)
    moved: dict[str, str] = {}
    for item in sorted(work.iterdir()):
        if item.name == "findings.json":
            continue
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(item, target)
        moved[item.name] = str(target)
    o = result.outputs
    o.seg = str(out / "seg.dcm") if "seg.dcm" in moved else None
    o.sr = str(out / "sr.dcm") if "sr.dcm" in moved else None
    o.key_images = sorted(str(p) for p in (out / "key_images").glob("*.dcm")) if "key_images" in moved else []
    o.label_map = str(out / "labels.nii.gz") if "labels.nii.gz" in moved else None
    o.instance_map = str(out / "instances.nii.gz") if "instances.nii.gz" in moved else None
    from .fileio import fsync_dir

    fsync_dir(out)  # the renames above
    result.write(out / "findings.json")


def _analyze(source: str, opts: AnalysisOptions, run: _Run) -> AnalysisResult:
    from .models.registry import get_card

    card = get_card(opts.model_id) if opts.model_id else None

    # source -> local series folder (or an image file for research use)
    pacs_src = parse_pacs_source(source)
    if pacs_src:
        with run.step("retrieve", 0.02, f"retrieving study {pacs_src[1]} from {pacs_src[0]}"):
            local: Path = _retrieve(pacs_src[0], pacs_src[1], run.work / "source", opts, run)
    else:
        local = Path(source)
        if not local.exists():
            raise PipelineError(f"{source} is neither a folder, a file nor NODE:STUDY_UID", stage="source")

    # series -> Volume + metadata
    with run.step("load", 0.16, "loading the series"):
        volume, instances, metadata = _load(local, card, opts)
    if card is None:
        card = choose_model(metadata, volume)
    result = AnalysisResult(
        study_instance_uid=volume.study_instance_uid,
        series_instance_uid=volume.series_instance_uid,
        model=ModelRef(id=card.id, version=card.version, weights_sha256=card.weights.sha256 if card.weights else ""),
    )
    result.outputs.source_dir = str(local if local.is_dir() else local.parent) if not pacs_src else str(run.out / "source")
    result.warnings.extend(volume.warnings)

    # protocol conformance: the header criteria are checked before any inference (a "refuse" policy
    # stops here). The image-quality measures need only the pixels: where the policy could refuse on
    # them they run beside inference (``overlap``) and are decided before anything is measured or
    # written; otherwise they are measured after the SEG and SR are stored (_protocol_start).
    with run.step("protocol", 0.2, "checking the acquisition against the protocol library"):
        iq_job, iq_deferred = _protocol_start(result, metadata, volume, card, opts)
    warn_at = len(result.warnings)  # protocol warnings go before the model's, as when run in turn

    # model, then findings (a model that owns its whole method measures its own findings)
    owned = _owned_model(card, opts)
    if owned is not None:
        with run.step("inference", 0.25, f"running {card.id} {card.version}"):
            def owned_progress(*a: Any) -> None:
                frac = next((x for x in a if isinstance(x, float)), 0.0)
                if run.progress:
                    run.progress(0.25 + 0.55 * frac, str(a[-1]) if a and isinstance(a[-1], str) else card.id)

            raw = _infer_then_protocol(run, lambda: owned.analyze(volume, progress=owned_progress),
                                       iq_job, result, metadata, volume, card, opts, warn_at)
        with run.step("findings", 0.8, "collecting measurements"):
            own = owned.to_analysis_result(raw)
            result.findings = own.findings
            result.study_measurements.update(own.study_measurements)
            result.context.update({k: v for k, v in own.context.items() if k != "native_ras_to_mni"})
            result.warnings.extend(w for w in own.warnings if w not in result.warnings)
            if own.model is not None:
                result.model = own.model
            labels_arr = raw.label_map()
            instance_map = labels_arr
            result.context["device"] = str(owned.device)
    else:
        with run.step("inference", 0.25, f"running {card.id} {card.version}"):
            inference = _infer_then_protocol(run, lambda: _infer(card, volume, opts, run),
                                             iq_job, result, metadata, volume, card, opts, warn_at)
        result.warnings.extend(w for w in inference.warnings if w not in result.warnings)
        result.context["device"] = inference.device
        for k, v in inference.timings_s.items():
            run.timings[f"inference.{k}"] = v
        with run.step("findings", 0.8, "measuring findings"):
            findings, instance_map = _findings(card, volume, inference)
            result.findings = findings
            result.study_measurements.update(_study_measurements(inference))
            labels_arr = inference.labels.array

    with run.step("rules", 0.85, "applying the clinical rule sets"):
        _priors(result, metadata, opts)
        _rules(result, card, metadata, opts)

    # outputs: the clinical result first. SEG and SR are written and stored before the work that does
    # not change them (key images for viewers without SEG support, the image-quality measures when the
    # policy does not refuse on them, the NIfTI maps): "SEG + SR stored" is what a reader waits for.
    from .fileio import deferred_durability  # the work folder is made durable once, at promotion

    with run.step("export", 0.88, "writing SEG and SR"):
        with deferred_durability():
            exported = _export(run.work, card, volume, instance_map, result, instances, opts)
    if opts.send_to and exported is not None:
        with run.step("send", 0.92, f"sending SEG/SR to {opts.send_to}"):
            _send(run, opts, result, [p for p in (exported.seg, exported.sr) if p is not None])
    run.timings["total.results"] = time.perf_counter() - run.t0  # a point in time, not a stage
    run.resume_collector()
    # The NIfTI maps (for review and research, not for the PACS) are written beside what follows
    # (mostly compression, which releases the GIL); waited for before anything is promoted.
    maps_job = _Background("nifti-maps", lambda: _write_maps(run.work, volume, labels_arr, instance_map),
                           start=opts.overlap)
    try:
        if exported is not None and opts.key_images and result.findings:
            with run.step("key_images", 0.94, "drawing the key images"):
                from .export import export_key_images

                with deferred_durability():
                    export_key_images(run.work, exported, volume, instance_map, result.findings, _device(card))
                if opts.send_to:
                    _send(run, opts, result, exported.key_images)
        if iq_deferred is not None:
            with run.step("image_quality", 0.96, "measuring image quality"):
                _protocol_finish(iq_deferred, result, metadata, volume, card, opts, warn_at)
    except BaseException:
        maps_job.join()
        raise
    with run.step("label_maps", 0.97, "writing the label maps"):
        maps_job.result()
    if opts.overlap:
        run.timings["label_maps.background"] = maps_job.run_s
    if opts.store is not None:
        with run.step("track", 0.98, "recording the result"):
            opts.store.record_result(
                result,
                patient_id=(metadata.identifiers.patient_id.value or "") if metadata else "",
                study_date=(metadata.study.study_date.value or "") if metadata else "",
                site=opts.site,
                findings_path=str(run.out / "findings.json"),
            )
    return result


def _load(local: Path, card: Any, opts: AnalysisOptions) -> tuple[Volume, list[Any], Any]:
    """The volume, the scan's headers of its instances (none for an image file) and its metadata."""
    if local.is_file() and local.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")):
        loader_ref = card.runner.settings.get("input_loader") if card is not None else None
        if loader_ref:
            from .inference.native import resolve_pipeline

            vol = resolve_pipeline(loader_ref)(local)
        else:
            from .inference.engine import load_input

            vol = load_input(local)
        if not vol.modality and card is not None:
            vol.modality = card.modality
        return vol, [], vol.metadata
    from .dicom.load import load_series

    ref = select_series(local, card.modality if card else None, opts.series_uid)
    vol = load_series(ref)
    return vol, list(ref.instances), vol.metadata


def choose_model(metadata: Any, volume: Volume) -> Any:
    """The model card that matches the series (modality, then body region / protocol) — the listener's
    choice when no model is named."""
    from .models.registry import list_cards

    modality = (volume.modality or "").upper()
    cards = [c for c in list_cards() if (c.modality or "").upper() == modality]
    if not cards:
        raise ModelError(f"no model card accepts {modality or 'this'} series {volume.series_instance_uid}")
    if len(cards) == 1:
        return cards[0]
    body = ((metadata.series.body_part_snomed.value or "") if metadata else "").split(" ")[0]
    for c in cards:
        if body and body.endswith(c.body_region.value):
            return c
    return cards[0]


def _protocol_start(result: AnalysisResult, metadata: Any, volume: Volume, card: Any,
                    opts: AnalysisOptions) -> tuple[Optional[_Background], Optional[_Background]]:
    """The header-only check and its policy decision (refusal raises here, before inference), and the
    image-quality measurement as ``(before_results, after_results)``, one of them None:

    - when the site policy refuses nonconforming series, the measures can stop the analysis, so they
      come before any result: with ``opts.overlap`` on a thread beside inference (returned first; the
      full decision follows inference: ``_protocol_finish``), in turn measured and decided now
      (both None);
    - otherwise they only add to the protocol block and the warnings of findings.json, and are
      measured after the SEG and SR are stored (returned second, not started).

    A series without headers gets (None, None)."""
    if metadata is None:
        result.protocol = {"id": None, "version": None, "conformant": None, "checks": [],
                           "messages": ["no DICOM header (image file input): acquisition not checked"]}
        return None, None
    from .protocols.conformance import ConformancePolicy, check_series
    from .protocols.quality import measure_image_quality, slice_positions_from_volume

    candidates = list(getattr(card, "required_protocols", []) or []) or None
    positions = slice_positions_from_volume(volume)
    header_report = check_series(metadata, None, opts.protocol_id, candidates=candidates, slice_positions_mm=positions)
    _protocol_decide(header_report, volume, opts)
    modality = metadata.series.modality.value or volume.modality
    gates = (opts.policy or ConformancePolicy()).on_nonconformant == "refuse"
    job = _Background("image-quality", lambda: measure_image_quality(volume, modality=modality, slice_positions_mm=positions),
                      start=opts.overlap and gates)
    if not gates:
        return None, job
    if not opts.overlap:  # in turn: the whole check before inference, as the reference
        _protocol_finish(job, result, metadata, volume, card, opts, len(result.warnings))
        return None, None
    return job, None


def _protocol_decide(report: Any, volume: Volume, opts: AnalysisOptions) -> Any:
    from .protocols.conformance import ConformancePolicy

    decision = (opts.policy or ConformancePolicy()).decide(report)
    if not decision.proceed:
        raise PipelineError(
            f"series {volume.series_instance_uid} does not meet protocol "
            f"{report.protocol.id if report.protocol else '(none matched)'}: " + "; ".join(decision.reasons[:4])
            + " (site policy: refuse)", stage="protocol")
    return decision


def _protocol_finish(iq_job: Optional[_Background], result: AnalysisResult, metadata: Any, volume: Volume,
                     card: Any, opts: AnalysisOptions, warn_at: int) -> None:
    """The full report (header + image-quality criteria) and the policy's decision on it."""
    if iq_job is None:
        return
    from .protocols.conformance import check_series
    from .protocols.quality import slice_positions_from_volume

    candidates = list(getattr(card, "required_protocols", []) or []) or None
    report = check_series(metadata, volume, opts.protocol_id, candidates=candidates,
                          slice_positions_mm=slice_positions_from_volume(volume), image_quality=iq_job.result())
    decision = _protocol_decide(report, volume, opts)
    result.protocol = {**report.findings_block(), "decision": decision.action, "messages": report.messages,
                       "image_quality": report.image_quality}
    if decision.action == "analyze_with_warning":
        result.warnings[warn_at:warn_at] = [f"protocol: {r}" for r in decision.reasons]


def _infer_then_protocol(run: _Run, infer: Callable[[], Any], iq_job: Optional[_Background], result: AnalysisResult,
                         metadata: Any, volume: Volume, card: Any, opts: AnalysisOptions, warn_at: int) -> Any:
    """Inference, then the protocol decision on the full report. The time spent waiting for the
    image-quality thread counts as protocol time (it is on the critical path); the thread's own
    duration is reported as ``protocol.background``. A series the policy refuses fails at stage
    "protocol" even when inference failed too (the refusal is the reason to give)."""
    try:
        out = infer()
    except (CancelledError, KeyboardInterrupt):
        raise  # a cancel does not wait for the measures (their daemon thread just finishes)
    except BaseException:
        if iq_job is not None:
            try:
                _protocol_finish(iq_job, result, metadata, volume, card, opts, warn_at)
            except PipelineError:
                run.stage = "protocol"
                raise
            except BaseException:  # noqa: BLE001 - the inference error is the one to report
                pass
        raise
    t0 = time.perf_counter()
    run.stage = "protocol"
    _protocol_finish(iq_job, result, metadata, volume, card, opts, warn_at)
    run.stage = "inference"
    wait = time.perf_counter() - t0
    # the wait is protocol time, not inference time: move it
    run.timings["protocol"] = run.timings.get("protocol", 0.0) + wait
    run.timings["inference"] = run.timings.get("inference", 0.0) - wait  # run.step adds the whole block
    if iq_job is not None and opts.overlap:
        run.timings["protocol.background"] = iq_job.run_s
    return out


def _infer(card: Any, volume: Volume, opts: AnalysisOptions, run: _Run) -> Any:
    from .inference.engine import run_model

    def on_progress(stage: str, fraction: float, message: str = "") -> None:
        if run.progress:
            run.progress(0.25 + 0.55 * float(fraction), message or stage)

    return run_model(card, volume, device=opts.device, weights_dir=opts.weights_dir,
                     progress=on_progress, cancel=run.cancel)


_OWNED_CACHE: dict[tuple[str, str, str, str], Any] = {}


def _owned_model(card: Any, opts: AnalysisOptions) -> Any:
    """The card's own method (``runner.settings.pipeline``: a class with ``load``, ``analyze`` and
    ``to_analysis_result``), loaded once per process; None for cards the engine runs."""
    ref = card.runner.settings.get("pipeline") if card.runner.kind == "native" else None
    if not ref:
        return None
    from .inference.native import resolve_pipeline

    cls = resolve_pipeline(ref)
    if not all(hasattr(cls, m) for m in ("load", "analyze", "to_analysis_result")):
        return None  # a function-style pipeline: the engine runs it
    key = (card.id, card.version, str(opts.weights_dir or ""), str(opts.device or "auto"))
    if key not in _OWNED_CACHE:
        _OWNED_CACHE[key] = cls.load(weights_dir=opts.weights_dir, device=opts.device or "auto")
    return _OWNED_CACHE[key]


def label_specs_for(card: Any) -> list[Any]:
    from .findings.extract import label_specs_from_card

    return label_specs_from_card(card)


def _findings(card: Any, volume: Volume, inference: Any) -> tuple[list[Any], np.ndarray]:
    from .findings.extract import extract_findings

    labels = inference.labels
    probs = getattr(inference.prediction, "probabilities", None)
    prob_vol = probs if isinstance(probs, Volume) and probs.array.shape == labels.array.shape else None
    findings, instance_map = extract_findings(labels, volume, prob_vol, label_specs_for(card), return_instance_map=True)
    return findings, instance_map


def _study_measurements(inference: Any) -> dict[str, float]:
    measures = getattr(inference.prediction, "study_measurements", None) or inference.info.get("study_measurements")
    return {k: float(v) for k, v in (measures or {}).items()}


def _priors(result: AnalysisResult, metadata: Any, opts: AnalysisOptions) -> None:
    if opts.store is None or metadata is None or not result.findings:
        return
    pid = metadata.identifiers.patient_id.value
    date = metadata.study.study_date.value
    if not pid or not date:
        return
    priors = opts.store.priors(pid, before_date=date, model_id=result.model.id if result.model else None)
    if not priors:
        return
    from .findings.prior import interval_days, match_prior
    from .rules.library import list_rule_sets

    prior_date, prior = priors[0]
    match_prior(result.findings, prior, interval_days=interval_days(prior_date, date))
    # the rules engine reads a prior's categories by rule-set id; findings recorded them by system
    ids_by_system = {rs.system: rs.id for rs in list_rule_sets()}
    for f in result.findings:
        if f.prior:
            f.prior["categories"] = {ids_by_system.get(k, k): v for k, v in f.prior.get("categories_by_system", {}).items()}
    result.context["prior_study_date"] = prior_date


def rule_sets_for(card: Any) -> list[str]:
    explicit = getattr(card, "rule_sets", None)
    if explicit is not None:
        return list(explicit)
    return list(DEFAULT_RULE_SETS.get(card.body_region.value, []))


def _rules(result: AnalysisResult, card: Any, metadata: Any, opts: AnalysisOptions) -> None:
    from .rules import evaluate
    from .rules.context import infer_context

    names = rule_sets_for(card)
    if not names:
        return
    ctx = infer_context(metadata, opts.context or None)
    kept = dict(result.context)  # apply_to replaces the context with the rules' view of it
    for name in names:
        evaluate(result.findings, ctx, name).apply_to(result, ctx)
    result.context = {**kept, **result.context}


def _write_maps(work: Path, volume: Volume, labels: np.ndarray, instance_map: np.ndarray) -> None:
    from .fileio import deferred_durability, save_nifti

    # the work folder is flushed once at promotion (this runs on its own thread: the context is its own)
    with deferred_durability():
        save_nifti(volume.with_array(labels.astype(np.uint8, copy=False)).to_nifti(), work / "labels.nii.gz")
        # the instance map's values are finding numbers: one byte while there are fewer than 256 findings
        # (readers take the values, not the type; half the bytes to compress)
        n_findings = int(instance_map.max(initial=0))
        imap_type = np.uint8 if n_findings < 256 else np.uint16
        save_nifti(volume.with_array(instance_map.astype(imap_type, copy=False)).to_nifti(), work / "instances.nii.gz")


def _device(card: Any) -> Any:
    from .export import DeviceInfo

    return DeviceInfo(model_id=card.id, model_version=card.version)


def _export(work: Path, card: Any, volume: Volume, instance_map: np.ndarray, result: AnalysisResult,
            instances: Sequence[Any], opts: AnalysisOptions) -> Any:
    """seg.dcm and sr.dcm (the SR already naming the key images, drawn later); None for an image file."""
    if not instances:  # an image file has no DICOM source to reference: findings.json and NIfTI only
        result.warnings.append("input was not DICOM: no SEG/SR/key images written")
        return None
    from .export import SeriesHeaders, export_results

    return export_results(
        work, volume, instance_map, result.findings, SeriesHeaders(instances, volume), _device(card),
        label_specs=label_specs_for(card), study_measurements=result.study_measurements or None,
        person_observer=opts.observer, key_images=opts.key_images,
    )


def _send(run: _Run, opts: AnalysisOptions, result: AnalysisResult, paths: Sequence[Path]) -> None:
    from .pacs.client import store
    from .pacs.settings import load_settings

    settings = opts.pacs_settings or load_settings()
    node = settings.node(opts.send_to)
    if not paths:
        return
    res = store(node, settings, paths)
    if res.failed:
        raise PipelineError(f"{node} refused {res.failed} of {len(paths)} result objects: {'; '.join(res.errors[:3])}", stage="send")
    result.context["sent_to"] = str(node)
    run.sent.extend(str(Path(p).relative_to(run.work)) for p in paths)


# --------------------------------------------------------------------------------------------------
# the unattended department: the listener hands over each completed study
# --------------------------------------------------------------------------------------------------
class StudyAnalyzer:
    """``on_study_complete`` for the listener: queues each completed study and analyses it on one
    worker thread (inference wants the machine to itself), so that the listener keeps receiving.

    Results go to ``results_root/<StudyInstanceUID>/``; a study that cannot be analysed gets its
    ``error.json`` there and the listener carries on. Our own SEG/SR coming back (e.g. routed by the
    PACS) are not images and are not analysed again."""

    def __init__(self, results_root: str | os.PathLike[str], options: AnalysisOptions) -> None:
        import queue

        self.results_root = Path(results_root)
        self.options = options
        self._queue: "queue.Queue[Optional[tuple[str, list[Path]]]]" = queue.Queue()
        self.done: list[tuple[str, str]] = []  # (study uid, "ok" | error kind)
        self._worker = threading.Thread(target=self._run, name="medimgai-analyzer", daemon=True)
        self._worker.start()

    def __call__(self, study_uid: str, paths: list[Path]) -> None:
        self._queue.put((study_uid, list(paths)))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            study_uid, paths = item
            try:
                self._analyze_one(study_uid, paths)
            finally:
                self._queue.task_done()

    def _analyze_one(self, study_uid: str, paths: list[Path]) -> None:
        from .dicom.scan import holds_an_image

        out = self.results_root / study_uid
        try:
            folder = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else None
            if folder is None or not holds_an_image(paths):  # analyze() scans the folder itself
                self.done.append((study_uid, "no-images"))
                return
            analyze(folder, out, self.options)
            self.done.append((study_uid, "ok"))
            log.info("analysed a completed study: results in %s", out)
        except MedImgAIError as exc:
            self.done.append((study_uid, exc.kind))
            log.warning("analysis of a completed study failed (%s); see %s", exc.kind, out / "error.json")
        except Exception:  # noqa: BLE001 - one bad study must not stop the department's listener
            self.done.append((study_uid, "internal"))
            log.exception("analysis of a completed study failed unexpectedly; see %s", out / "error.json")

    def join(self) -> None:
        """Wait until every queued study has been analysed (tests, clean shutdown)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=600)
