"""End to end on the CPU: a 512x512x300 phantom study that has just completed at the listener, through
load -> protocol check -> ct-lung-nodule -> findings -> rules -> SEG/SR/key images -> C-STORE to the PACS.

Prints the time per stage (median of ``--runs``) and the share of everything except model inference in
the total (target: <= 15 %). The PACS that receives the results is the embedded one on 127.0.0.1.

    python -m Testing.benchmarks.bench_pipeline [--runs 3] [--matrix 512] [--slices 300]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

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
    runs: list[dict[str, float]] = []
    try:
        for i in range(args.runs):
            result = analyze(tmp / "study", tmp / f"out{i}", AnalysisOptions(
                model_id="ct-lung-nodule", device=args.device, send_to="pacs", pacs_settings=settings))
            stages = {k: v for k, v in result.timings_s.items() if "." not in k}
            runs.append(stages)
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    finally:
        pacs.stop()
    names = list(runs[0])
    med = {k: statistics.median(r[k] for r in runs) for k in names}
    total = med["total"]
    other = total - med.get("inference", 0.0)
    print("\nstage          median s   share of total")
    for k in names:
        if k != "total":
            print(f"{k:<14} {med[k]:8.2f}   {100 * med[k] / total:5.1f} %")
    print(f"{'total':<14} {total:8.2f}")
    print(f"everything except inference: {other:.2f} s = {100 * other / total:.1f} % of the total (target <= 15 %)")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
