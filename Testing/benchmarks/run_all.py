"""Every benchmark in turn with its default arguments (``make bench``): each runs in its own process,
so that one's imports, caches and memory do not colour the next; a failing one is reported and the
others still run. Takes ~20-30 minutes on a 2-core machine; bench_pacs needs root (network namespace).

    python -m Testing.benchmarks.run_all [NAME ...]     (NAME: load, pacs, inference, seg, export, ...)
"""

from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = ("load", "pacs", "inference", "seg", "export", "pipeline", "protocols", "review", "hippodeep", "phantom")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"\n=== bench_{name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", f"Testing.benchmarks.bench_{name}"])
        print(f"=== bench_{name}: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
