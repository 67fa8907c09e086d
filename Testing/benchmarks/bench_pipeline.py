"""End to end on the CPU: a 512x512x300 phantom study that has just completed at the listener, through
load -> protocol check -> ct-lung-nodule -> findings -> rules -> SEG/SR/key images -> C-STORE to the PACS.

Prints the time per stage (median of ``--runs`` per mode) and the share of everything except model
inference in the total (target: <= 15 %). The PACS that receives the results is the embedded one on
127.0.0.1, in this process.

Two modes, run alternately in the same process after one warm-up run (the first analysis in a process
loads the network and warms highdicom; a listener is a long-lived process, so the steady state is what
the target is about — the warm-up run is printed on its own):

- ``overlap`` (the default of ``AnalysisOptions``): the image-quality measures and the reading of the
  source headers run on a thread beside inference, the NIfTI maps beside the DICOM export. A stage's
  figure is its time on the critical path (``protocol`` is then only the header check, the final
  decision and any wait for the image-quality thread); what ran beside is printed as "background".
- ``sequential``: every stage in turn (``AnalysisOptions(overlap=False)``), the reference.

Background threads compete with inference for the CPU, so the overlap mode's inference stage can be
slower than the sequential one's. The share is therefore printed twice: from the overlap run's own
stage split, and against the inference time measured alone (sequential mode), which charges any
slowdown of inference to the overhead.

    python -m Testing.benchmarks.bench_pipeline [--runs 3] [--modes overlap,sequential] [--matrix 512] [--slices 300] [--keep]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

STAGES = ("load", "protocol", "inference", "findings", "rules", "export", "send", "promote")
BACKGROUND = ("protocol.background", "export.nifti_background")


def _stages(timings: dict[str, float]) -> dict[str, float]:
    out = {k: float(timings.get(k, 0.0)) for k in STAGES}
    out["total"] = float(timings["total"])
    for k in BACKGROUND:
        out[k] = float(timings.get(k, 0.0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per mode (after one warm-up run)")
    ap.add_argument("--modes", default="overlap,sequential", help="comma-separated: overlap, sequential")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", action="store_true", help="keep the phantom and the outputs (~400 MB) in the temp folder")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("overlap", "sequential") for m in modes):
        ap.error("--modes takes overlap and/or sequential")

    from MedImgAILib.pacs.listener import Listener, ListenerConfig
    from MedImgAILib.pacs.settings import Node, PacsSettings
    from MedImgAILib.phantoms import NoduleSpec, PhantomSpec, write_phantom_series
    from MedImgAILib.phantoms.spec import AcquisitionSpec
    from MedImgAILib.pipeline import AnalysisOptions, analyze

    tmp = Path(tempfile.mkdtemp(prefix="medimgai-bench-pipeline-"))
    t0 = time.perf_counter()
    spec = PhantomSpec(seed=5, nodules=[NoduleSpec(diameter_mm=d) for d in (6.0, 9.0, 13.0, 18.0, 24.0)],
                       acquisition=AcquisitionSpec(matrix=args.matrix, slices=args.slices, slice_thickness_mm=1.0))
    write_phantom_series(spec, tmp / "study", keep_volume=False)
    print(f"phantom {args.matrix}x{args.matrix}x{args.slices} written in {time.perf_counter() - t0:.1f} s")

    pacs = Listener(ListenerConfig(aet="BENCHPACS", host="127.0.0.1", port=0, store_dir=tmp / "pacs",
                                   quiet_seconds=3600, min_free_mb=50)).start()
    node = Node(aet="BENCHPACS", host="127.0.0.1", port=pacs.port, name="pacs")
    settings = PacsSettings(nodes={"pacs": node})
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}

    def one(mode: str, n: int) -> dict[str, float]:
        kw = {"overlap": mode == "overlap"} if "overlap" in AnalysisOptions.__dataclass_fields__ else {}
        if mode == "overlap" and not kw:
            raise SystemExit("this version of the pipeline has no overlap mode: use --modes sequential")
        result = analyze(tmp / "study", tmp / f"out{n}", AnalysisOptions(
            model_id="ct-lung-nodule", device=args.device, send_to="pacs", pacs_settings=settings, **kw))
        st = _stages(result.timings_s)
        bg = ", ".join(f"{k.split('.')[0]}:{k.split('.')[-1].replace('_background', '')} {st[k]:.2f}"
                       for k in BACKGROUND if st[k])
        print(f"{mode:<10} " + ", ".join(f"{k} {st[k]:.2f}" for k in (*STAGES, "total"))
              + (f"  | background: {bg}" if bg else ""), flush=True)
        return st

    try:
        print("warm-up (first analysis in this process, not counted):")
        one(modes[0], 0)
        n = 1
        for _ in range(args.runs):
            for mode in modes:  # alternate, so that drifting machine load hits both modes alike
                runs[mode].append(one(mode, n))
                n += 1
    finally:
        pacs.stop()
        if args.keep:
            print(f"phantom and outputs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items() if rs}
    print(f"\nmedians of {args.runs} run(s) per mode (s)")
    print(f"{'stage':<12}" + "".join(f"{m:>13}" for m in med))
    for k in (*STAGES, "total"):
        print(f"{k:<12}" + "".join(f"{med[m][k]:13.2f}" for m in med))
    for k in BACKGROUND:
        if any(med[m][k] for m in med):
            print(f"{'  ' + k.replace('_background', '').replace('.background', '') + ' (beside)':<12}"
                  + "".join(f"{med[m][k]:13.2f}" for m in med))
    for m, s in med.items():
        other = s["total"] - s["inference"]
        print(f"{m}: everything except inference {other:.2f} s = {100 * other / s['total']:.1f} % of the total "
              "(target <= 15 %)")
    if "overlap" in med and "sequential" in med:
        o, q = med["overlap"], med["sequential"]
        other = o["total"] - q["inference"]
        print(f"overlap, against inference measured alone ({q['inference']:.2f} s): {other:.2f} s = "
              f"{100 * other / o['total']:.1f} % of the overlap total; inference overlap/sequential = "
              f"{o['inference'] / q['inference']:.2f}; total overlap/sequential = {o['total'] / q['total']:.2f}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
