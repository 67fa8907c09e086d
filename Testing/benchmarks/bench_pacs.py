"""PACS throughput: ours vs DCMTK, measured in the same run, alternating, medians.

    python -m Testing.benchmarks.bench_pacs [--runs 7] [--slices 200] [--size 512]

1. Retrieve a 200-slice 512x512 CT study from Orthanc (TCP_NODELAY=1, in a loopback-only netns):
   `medimgai pacs get` vs DCMTK `getscu` (TCP_NODELAY=1). Each is timed as the whole command a user
   runs (process start included); ours' own reported seconds are printed too.
2. Ingest: DCMTK `storescu` sending the study to `medimgai listen` (durable: journal flush before
   each success, the default) vs to DCMTK `storescp` (no flush). Timed as the storescu command; the
   servers' CPU is read from /proc (the listener's after it has placed, cataloged and indexed
   everything, which it does after the acknowledgements). Then the same with both stores on tmpfs
   (/dev/shm), where fdatasync costs nothing: how much of the gap is the flush the listener owes each
   instance before its success status (storescp never flushes). `--figures ingest,no-shm` skips it.
   The listener keeps one store (and its write-ahead journal) over the rounds, as in use; each round
   sends a new study (same size, new UIDs).
In both figures nothing is deleted until the figure is done, and the page cache is flushed before
each timed run (see bench_retrieve: deleting files between runs made every later file creation on
this machine's filesystem scan past the deleted inodes, a cost that grew with the rounds).
Prints one line per figure: ours, reference, ratio (images/s ours / images/s reference), and peak RSS,
then the ratios of each round's pair (ours and the reference back to back): their median, range and
how many rounds meet 1.0 / 0.8. For ingest each round also prints the disk's flush latency just before
it (fdatasync of a 4 kB overwrite): the floor of a durable acknowledgement at that moment, which here
moves between ~0.2 and ~3 ms within minutes and with it the ratio.
Needs root (network namespace), Orthanc and DCMTK.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from Testing.conftest import REPO
from Testing.integration.peers import NetNs, Orthanc
from Testing.integration.study_data import ct_series


CPU: dict[str, list[float]] = {}  # command name -> CPU seconds (user+sys) per run


def _timed(cmd: list[str], ns: NetNs | None = None, env: dict | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (kB, /usr/bin/time -v) and stdout of ``cmd``; CPU seconds go to CPU."""
    full = ["/usr/bin/time", "-v", *cmd]
    if ns is not None:
        full = ns.cmd(*full)
    t0 = time.perf_counter()
    r = subprocess.run(full, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"benchmark command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", r.stderr))
    CPU.setdefault(Path(cmd[0]).name if "python" not in cmd[0] else "medimgai", []).append(cpu)
    return dt, int(m.group(1)) if m else 0, r.stdout


def _line(name: str, ours: list[float], ref: list[float], n: int, ours_rss: list[int], ref_rss: list[int], ref_name: str) -> dict:
    """The figure: medians, their ratio, and the ratios of each round's pair (ours and the reference
    run back to back, in alternating order): on a shared machine whole rounds speed up and slow
    down together, so the pairs' spread shows how far one run's ratio can be trusted."""
    o, r = statistics.median(ours), statistics.median(ref)
    ratio = (n / o) / (n / r)
    paired = sorted(b / a for a, b in zip(ours, ref))

    def peak(rss: list[int]) -> str:
        return f", peak {max(rss) / 1024:.0f} MB" if max(rss) > 1 else ""

    print(f"{name}: ours {n / o:7.1f} img/s ({o:.2f} s{peak(ours_rss)})  "
          f"{ref_name} {n / r:7.1f} img/s ({r:.2f} s{peak(ref_rss)})  ratio {ratio:.2f}")
    print(f"  per round (ours and {ref_name} back to back): ratio median {statistics.median(paired):.2f}, "
          f"range {paired[0]:.2f}-{paired[-1]:.2f}, {sum(x >= 1.0 for x in paired)}/{len(paired)} rounds >= 1.0, "
          f"{sum(x >= 0.8 for x in paired)}/{len(paired)} >= 0.8")
    return {"figure": name, "ours_images_per_s": n / o, "reference_images_per_s": n / r, "ratio": ratio,
            "paired_ratio_median": statistics.median(paired), "paired_ratios": paired,
            "ours_runs_s": ours, "reference_runs_s": ref}


def bench_retrieve(ns: NetNs, orthanc: Orthanc, study_uid: str, n: int, runs: int, work: Path, parallel: int = 1) -> dict:
    """Both commands write 200 new files per run. Their outputs are kept until the figure is done
    and the page cache is flushed (untimed) before each run: deleting them between runs made every
    later file creation scan past the just-deleted inodes (ext4 without a journal, as here, skips
    inodes deleted in the last 60-360 s: 0.3-1.5 ms per new file, growing with the rounds), and a
    run's flush (ours ends with one) waited for the other command's unflushed output."""
    ours, ref, ours_rss, ref_rss, internal = [], [], [], [], []
    outs = work / "get-outputs"
    for i in range(runs):
        for who in (("ours", "ref") if i % 2 == 0 else ("ref", "ours")):
            out = outs / f"{who}-{i}"
            out.mkdir(parents=True)
            os.sync()
            if who == "ours":
                dt, rss, stdout = _timed([sys.executable, "-m", "MedImgAILib", "pacs", "get", orthanc.node, study_uid,
                                          "--out", str(out), "--json", "--parallel", str(parallel)], ns)
                res = json.loads(stdout)
                assert res["received"] == n and res["complete"], res
                ours.append(dt), ours_rss.append(rss), internal.append(res["seconds"])
            else:
                dt, rss, _ = _timed(["getscu", "-S", "-aet", "GETSCU", "-aec", orthanc.aet, "-k", "QueryRetrieveLevel=STUDY",
                                     "-k", f"StudyInstanceUID={study_uid}", "-od", str(out), "127.0.0.1", str(orthanc.port)],
                                    ns, env={"TCP_NODELAY": "1"})
                assert len(list(out.iterdir())) == n
                ref.append(dt), ref_rss.append(rss)
    shutil.rmtree(outs, ignore_errors=True)
    fig = _line("retrieve (C-GET from Orthanc)", ours, ref, n, ours_rss, ref_rss, "getscu")
    c_ours, c_ref = statistics.median(CPU["medimgai"]), statistics.median(CPU["getscu"])
    # what starting Python and importing pydicom/pynetdicom/pydantic costs before any DICOM
    start_wall, start_cpu = [], []
    for _ in range(runs):
        before = len(CPU["medimgai"])
        start_wall.append(_timed([sys.executable, "-m", "MedImgAILib", "pacs", "get", "--help"])[0])
        start_cpu.append(CPU["medimgai"].pop(before))
    sw, sc = statistics.median(start_wall), statistics.median(start_cpu)
    print(f"  CPU per image: ours {c_ours / n * 1000:.1f} ms ({(c_ours - sc) / n * 1000:.1f} ms without the "
          f"process start), getscu {c_ref / n * 1000:.1f} ms")
    fig["cpu_ms_per_image"] = {"ours": c_ours / n * 1000, "ours_without_start": (c_ours - sc) / n * 1000,
                               "getscu": c_ref / n * 1000}
    inner = n / statistics.median(internal)
    print(f"  ours, retrieval only (process start excluded): {inner:.1f} img/s, ratio {inner / (n / statistics.median(ref)):.2f}; "
          f"the process start alone (`pacs get --help`): {sw:.2f} s wall, {sc:.2f} s CPU")
    fig["ours_internal_images_per_s"] = inner
    fig["process_start"] = {"wall_s": sw, "cpu_s": sc}
    return fig


def _start(cmd: list[str], ns: NetNs, port: int) -> subprocess.Popen:
    p = subprocess.Popen(ns.cmd(*cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                         env={**os.environ, "TCP_NODELAY": "1"}, start_new_session=True)
    ns.wait_port(port, proc=p)
    return p


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (`ip netns exec` execs the server: same pid)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(p: subprocess.Popen, name: str) -> None:
    """Stop a server; its CPU seconds up to now (start-up included) go to CPU[name]."""
    CPU.setdefault(name, []).append(_cpu_seconds(p.pid))
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()


def bench_ingest(ns: NetNs, studies: list[list[Path]], work: Path, label: str = "ingest (storescu -> listener)",
                 details: bool = True) -> dict:
    """One round per study in ``studies`` (each a new study: same size, new UIDs), sent to both
    servers. Nothing is deleted before the figure is done and the page cache is flushed (untimed)
    before each run, for the reasons given in :func:`bench_retrieve`."""
    n, runs = len(studies[0]), len(studies)
    for name in ("listener", "storescp", "listener-idle"):  # server CPU of this figure's runs only
        CPU.pop(name, None)
    ours, ref, ours_rss, ref_rss = [], [], [], []
    flushes: list[float] = []
    send = ["storescu", "-aet", "STORESCU", "-aec", "LISTENER", "127.0.0.1"]
    # one store for every round, as a listener's store lives on: its write-ahead journal (256 MB,
    # written full once, when the store is new) is made in the first round only, not before each,
    # where those writes could slow the disk for the rounds that follow
    listener_store = work / "ingest-listener"
    for i, files in enumerate(studies):
        if details:  # the disk's flush latency now: it moves between ~0.2 and ~3 ms here within minutes
            flushes.append(_flush_latency_ms(work))
        for who in (("ours", "ref") if i % 2 == 0 else ("ref", "ours")):
            store = listener_store if who == "ours" else work / f"ingest-{who}-{i}"
            store.mkdir(parents=True, exist_ok=True)
            os.sync()
            if who == "ours":
                srv = _start([sys.executable, "-m", "MedImgAILib", "listen", "--aet", "LISTENER", "--port", "11112",
                              "--store", str(store), "--quiet-seconds", "3600", "--min-free-mb", "100"], ns, 11112)
                CPU.setdefault("listener-idle", []).append(_cpu_seconds(srv.pid))
                dt, _, _ = _timed([*send, "11112", *map(str, files)], ns, env={"TCP_NODELAY": "1"})
                # the listener places, catalogs and indexes after the acknowledgements, once idle:
                # let it, so that its CPU below includes that work
                time.sleep(1.5)
                _stop(srv, "listener")
                ours.append(dt)
                ours_rss.append(0)
                assert len(list(store.glob("*/*/*.dcm"))) == n * (i + 1)
            else:
                srv = _start(["storescp", "-aet", "LISTENER", "-od", str(store), "11113"], ns, 11113)
                dt, _, _ = _timed([*send, "11113", *map(str, files)], ns, env={"TCP_NODELAY": "1"})
                _stop(srv, "storescp")
                ref.append(dt)
                ref_rss.append(0)
                assert len(list(store.iterdir())) == n
        if details:
            print(f"    round {i + 1}: flush {flushes[-1]:.2f} ms, listener {ours[-1]:.3f} s, storescp {ref[-1]:.3f} s, "
                  f"ratio {ref[-1] / ours[-1]:.2f}", flush=True)
    shutil.rmtree(listener_store, ignore_errors=True)
    for i in range(runs):
        shutil.rmtree(work / f"ingest-ref-{i}", ignore_errors=True)
    fig = _line(label, ours, ref, n, [1], [1], "storescp")
    if flushes:
        fig["flush_ms_per_round"] = flushes
    # server CPU, start-up included (the listener's Python start and imports: ~0.8 s of CPU here)
    c_ours, c_ref = statistics.median(CPU["listener"]), statistics.median(CPU["storescp"])
    c_idle = statistics.median(CPU["listener-idle"])
    print(f"  server CPU per image: listener {(c_ours - c_idle) / n * 1000:.1f} ms (start-up excluded; "
          f"{c_idle:.2f} s to start), storescp {c_ref / n * 1000:.1f} ms")
    fig["server_cpu_ms_per_image"] = {"ours": c_ours / n * 1000, "storescp": c_ref / n * 1000}
    if not details:
        return fig
    fig["durable_write_ms"] = _durable_write_cost(files[0], work)
    w = fig["durable_write_ms"]
    print(f"  per instance on this disk: journal append + fdatasync {w['journal']:.1f} ms (what the listener "
          f"does before each success), write + fdatasync + rename + fsync dir {w['durable']:.1f} ms, "
          f"plain write + rename {w['plain']:.1f} ms (storescp: no flush)")
    print(f"  => a serial sender cannot get more than {1000 / w['journal']:.0f} img/s from a listener that "
          f"flushes before each success, here")
    return fig


def _flush_latency_ms(work: Path, n: int = 8) -> float:
    """Median time of ``fdatasync`` after a 4 kB overwrite of an allocated file, now: the least a
    durable acknowledgement can cost on this disk at this moment."""
    path = work / "flush-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"\0" * (n * 4096), 0)
        os.fsync(fd)
        times = []
        for k in range(n):
            os.pwrite(fd, b"x" * 4096, k * 4096)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


def _durable_write_cost(sample: Path, work: Path, n: int = 50) -> dict[str, float]:
    """What the listener's promise (on disk before success) costs per instance here."""
    from MedImgAILib.pacs.storage import Journal, write_durably

    data = sample.read_bytes()
    d = work / "fsync-probe"
    d.mkdir(exist_ok=True)
    journal = Journal(d, capacity=(len(data) + 4096) * (n + 2))
    out: dict[str, list[float]] = {}
    for name in ("plain", "durable", "journal") * 2:
        t0 = time.perf_counter()
        for i in range(n):
            if name == "journal":
                journal.append(f"x/y/{i}.dcm", data)
                journal.placed()
            else:
                write_durably(d / f"{i}.dcm", data, durable=name == "durable")
        out.setdefault(name, []).append((time.perf_counter() - t0) / n * 1000)
        if name == "journal":
            journal.offset = 4096  # start over (no checkpoint needed for a probe)
    os.close(journal.fd)
    shutil.rmtree(d)
    return {k: statistics.median(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7, help="alternating rounds per figure (default 7)")
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--parallel", type=int, default=1, help="associations for `pacs get` (default 1)")
    ap.add_argument("--figures", default="retrieve,ingest", help="which figures to measure (comma-separated)")
    args = ap.parse_args(argv)
    for tool in ("Orthanc", "getscu", "storescu", "storescp", "ip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    # Byte-compile the package first, as `pip install` does: where PYTHONDONTWRITEBYTECODE is set (it
    # is in this project's sessions) every run of a checkout would otherwise compile the modules it
    # imports (~40 ms for `pacs get`), a cost no installed copy pays.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "MedImgAILib")], check=True)
    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as tmp:
        work = Path(tmp)
        files = ct_series(work / "ct", args.slices, size=args.size, patient_id="BENCH001")
        import pydicom

        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        ns = NetNs.create(f"medimgai-bench-{os.getpid()}")
        orthanc = Orthanc(ns, work / "orthanc", modalities={"getscu": ("GETSCU", "127.0.0.1", 1)})
        try:
            orthanc.start()
            orthanc.upload(files)
            print(f"{args.slices} CT slices {args.size}x{args.size}, {args.runs} alternating runs each, medians")
            figures = []
            if "retrieve" in args.figures:
                figures.append(bench_retrieve(ns, orthanc, study_uid, len(files), args.runs, work, args.parallel))
            orthanc.stop()
            if "ingest" in args.figures:
                # a new study per round (same size, new UIDs): the listener's store keeps them all
                studies = [files] + [ct_series(work / f"ct{i}", args.slices, size=args.size, patient_id="BENCH001",
                                               seed=i) for i in range(1, args.runs)]
                figures.append(bench_ingest(ns, studies, work))
                # The same with both stores on tmpfs, where fdatasync costs nothing: what the ratio
                # would be if this disk's flush were free, i.e. how much of the gap above is the flush
                # the listener owes each instance (storescp never flushes). A measurement, not a setup.
                if Path("/dev/shm").is_dir() and "no-shm" not in args.figures:
                    with tempfile.TemporaryDirectory(prefix="bench-pacs-", dir="/dev/shm") as shm:
                        figures.append(bench_ingest(ns, studies, Path(shm),
                                                    "  same, both stores on tmpfs (flush free)", details=False))
        finally:
            orthanc.stop()
            ns.remove()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
