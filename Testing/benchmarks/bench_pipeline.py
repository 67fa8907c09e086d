"""End to end on the CPU: a 512x512x300 phantom study that has just completed at the listener, through
load -> protocol check -> ct-lung-nodule -> findings -> rules -> SEG + SR -> C-STORE to the PACS, and
then what does not change the result (key images, image-quality measures, NIfTI maps, promotion).

The issue's span is from "study complete" to "SEG + SR stored" (``timings_s["total.results"]``); the
target is that everything except model inference is <= 15 % of it. The share of the whole run (until
findings.json is final) is printed too. The PACS that receives the results is the embedded one on
127.0.0.1, in this process.

Modes, run alternately in the same process after one warm-up run (the first analysis in a process
loads the network and warms highdicom; a listener is a long-lived process, so the steady state is what
the target is about — the warm-up run is printed on its own):

- ``default``: ``AnalysisOptions()`` as the listener runs it. The site policy analyses nonconforming
  series with a warning, so the image-quality measures cannot stop the analysis and run after the
  SEG + SR are stored; the NIfTI maps are written on a thread beside the key images.
- ``gating``: a policy that refuses nonconforming series (the phantom conforms). The measures must
  come before any result, so they run on a thread beside inference; on this CPU-only machine they
  compete with inference for the cores, which the inference stage then shows.
- ``sequential``: the default policy with ``overlap=False``: every stage in turn, the reference.

    python -m Testing.benchmarks.bench_pipeline [--runs 3] [--modes default,gating,sequential] [--matrix 512] [--slices 300] [--keep]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

#: until "SEG + SR stored", then the rest of the run
RESULT_STAGES = ("load", "protocol", "inference", "findings", "rules", "export", "send")
AFTER_STAGES = ("key_images", "image_quality", "label_maps", "promote")
BACKGROUND = ("protocol.background", "label_maps.background")
MODES = ("default", "gating", "sequential")


def _stages(timings: dict[str, float]) -> dict[str, float]:
    out = {k: float(timings.get(k, 0.0)) for k in (*RESULT_STAGES, *AFTER_STAGES, *BACKGROUND)}
    out["results"] = float(timings["total.results"])
    out["total"] = float(timings["total"])
    return out


def _share(s: dict[str, float], span: str, inference: float | None = None) -> tuple[float, float]:
    other = s[span] - (s["inference"] if inference is None else inference)
    return other, 100 * other / s[span]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per mode (after one warm-up run)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", action="store_true", help="keep the phantom and the outputs (~400 MB) in the temp folder")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes takes {', '.join(MODES)}")

    from MedImgAILib.pacs.listener import Listener, ListenerConfig
    from MedImgAILib.pacs.settings import Node, PacsSettings
    from MedImgAILib.phantoms import NoduleSpec, PhantomSpec, write_phantom_series
    from MedImgAILib.phantoms.spec import AcquisitionSpec
    from MedImgAILib.pipeline import AnalysisOptions, analyze
    from MedImgAILib.protocols.conformance import ConformancePolicy

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
    mode_options = {
        "default": {},
        "gating": {"policy": ConformancePolicy(on_nonconformant="refuse")},
        "sequential": {"overlap": False},
    }

    def one(mode: str, n: int) -> dict[str, float]:
        result = analyze(tmp / "study", tmp / f"out{n}", AnalysisOptions(
            model_id="ct-lung-nodule", device=args.device, send_to="pacs", pacs_settings=settings,
            **mode_options[mode]))
        st = _stages(result.timings_s)
        bg = ", ".join(f"{k.split('.')[0]} {st[k]:.2f}" for k in BACKGROUND if st[k])
        print(f"{mode:<10} " + ", ".join(f"{k} {st[k]:.2f}" for k in RESULT_STAGES)
              + f" | SEG+SR stored at {st['results']:.2f} ({_share(st, 'results')[1]:.1f} % not inference) | "
              + ", ".join(f"{k} {st[k]:.2f}" for k in AFTER_STAGES)
              + f", total {st['total']:.2f}" + (f"  | beside: {bg}" if bg else ""), flush=True)
        return st

    try:
        print("warm-up (first analysis in this process, not counted):")
        one(modes[0], 0)
        n = 1
        for _ in range(args.runs):
            for mode in modes:  # alternate, so that drifting machine load hits every mode alike
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
    print(f"{'stage':<22}" + "".join(f"{m:>12}" for m in med))
    rows = [*RESULT_STAGES, "results", *AFTER_STAGES, "total", *BACKGROUND]
    labels = {"results": "= SEG+SR stored at", "total": "= total",
              **{k: f"  {k.split('.')[0]} (beside)" for k in BACKGROUND}}
    for k in rows:
        if k in BACKGROUND and not any(med[m][k] for m in med):
            continue
        print(f"{labels.get(k, k):<22}" + "".join(f"{med[m][k]:12.2f}" for m in med))
    print()
    for m, s in med.items():
        o_r, p_r = _share(s, "results")
        o_t, p_t = _share(s, "total")
        per_run = sorted(_share(r, "results")[1] for r in runs[m])
        print(f"{m}: everything except inference until SEG+SR stored {o_r:.2f} s = {p_r:.1f} % (target <= 15 %; "
              f"per run {', '.join(f'{x:.1f}' for x in per_run)} %); of the whole run {o_t:.2f} s = {p_t:.1f} %")
    if "sequential" in med:
        q = med["sequential"]["inference"]
        for m, s in med.items():
            if s["protocol.background"]:  # something ran beside inference: charge its slowdown too
                o_r, p_r = _share(s, "results", q)
                print(f"{m}, against inference in the sequential runs ({q:.2f} s; charges any slowdown of inference "
                      f"to the rest): {o_r:.2f} s = {p_r:.1f} % until SEG+SR stored; inference {m}/sequential "
                      f"{s['inference'] / q:.2f}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
