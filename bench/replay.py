"""Replay throughput: the whole GNSS pipeline against a plain pynmeagps loop.

    python bench/replay.py [--sentences 200000] [--runs 3]

Builds a raw capture from the GNSS corpus repeated to at least --sentences sentences, then
times, each in a fresh subprocess (best of --runs):

* pipeline: `terminal-gw replay --fast --jsonl` end to end, in-process (capture reader,
  framer, checksum, decoder, epoch assembler, models, JSON lines written to /dev/null);
* plain: a loop that calls `pynmeagps.NMEAReader.parse` on every sentence line and keeps
  nothing.

Binary decoding is on, as in `run`: the pipeline's framer looks for UBX and CASIC frames in
every byte and its decoders take any it finds (the counts are printed; this corpus has none).

Prints sentences/s for both and the peak resident memory (ru_maxrss) of each subprocess,
with the resident memory right after imports for reference. `--profile` prints a cProfile
of one pipeline run instead, `--stages` the time of each stage added in turn.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from terminal_gw.gnss.framer import Frame, Framer

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus" / "gnss"


def build_capture(path: Path, min_sentences: int) -> int:
    """Write the corpus logs, repeated, to `path`; return the number of sentence lines."""
    logs = sorted(CORPUS.glob("*.log"))
    if not logs:
        raise SystemExit(f"no corpus in {CORPUS}")
    blob = b"".join(p.read_bytes() for p in logs)
    if not blob.endswith(b"\n"):
        blob += b"\n"
    per_copy = sum(1 for ln in blob.splitlines() if ln.startswith(b"$"))
    copies = -(-min_sentences // per_copy)
    path.write_bytes(blob * copies)
    return per_copy * copies


def _rss_kb() -> int:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def work_pipeline(path: Path) -> dict[str, float]:
    """Replay `path` through the real pipeline, JSON lines to /dev/null."""
    from terminal_gw.gnss.pipeline import GnssPipeline
    from terminal_gw.replay import Replayer
    from terminal_gw.transport.capture import CaptureReader

    rss_imports = _rss_kb()
    with open(os.devnull, "w", encoding="utf-8") as out:
        t0 = time.perf_counter()
        replayer = Replayer(GnssPipeline, out=out, jsonl=True, speed=None)
        replayer.replay([CaptureReader(path)])
        seconds = time.perf_counter() - t0
    counters = replayer.counters
    return {
        "seconds": seconds,
        "records": replayer.stats.records.total(),
        "sentences": counters["good"],
        "binary_frames": counters["ubx_good"] + counters["casic_good"],
        "binary_decoded": counters["binary_decoded"],
        "rss_imports_kb": rss_imports,
        "rss_peak_kb": _rss_kb(),
    }


def work_plain(path: Path) -> dict[str, float]:
    """Decode every sentence line with pynmeagps and drop the result."""
    from pynmeagps import NMEAReader

    rss_imports = _rss_kb()
    t0 = time.perf_counter()
    parsed = errors = 0
    with path.open("rb") as f:
        for line in f:
            if not line.startswith(b"$"):
                continue
            try:
                NMEAReader.parse(line)
                parsed += 1
            except Exception:
                errors += 1
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "records": parsed,
        "errors": errors,
        "rss_imports_kb": rss_imports,
        "rss_peak_kb": _rss_kb(),
    }


def _frames(framer: Framer, path: Path) -> Iterator[Frame]:
    """The frames of a raw capture as the replay frames them: runs of whole lines together,
    any line the byte scan must see alone."""
    from terminal_gw.transport.capture import CaptureReader

    for data, whole in CaptureReader(path).raw_blocks():
        if not whole:
            yield from framer.feed(data)
            continue
        pos, n = 0, len(data)
        while pos < n:
            entries, end = framer.feed_lines(data, pos)
            yield from (e for e in entries if e is not None)
            if end < n:
                pos = data.index(b"\n", end) + 1
                yield from framer.feed(data[end:pos])
            else:
                pos = end


def stages(path: Path) -> list[tuple[str, float]]:
    """Seconds for each stage added in turn, to show where the pipeline's time goes."""
    from terminal_gw.gnss.decoder import Decoder
    from terminal_gw.gnss.framer import Framer, Sentence
    from terminal_gw.gnss.pipeline import GnssPipeline
    from terminal_gw.replay import Replayer
    from terminal_gw.transport.capture import CaptureReader

    out: list[tuple[str, float]] = []

    t0 = time.perf_counter()
    for _block in CaptureReader(path).raw_blocks():
        pass
    out.append(("read capture", time.perf_counter() - t0))

    t0 = time.perf_counter()
    for _frame in _frames(Framer(), path):
        pass
    out.append(("+ framer", time.perf_counter() - t0))

    decoder = Decoder()
    t0 = time.perf_counter()
    for frame in _frames(Framer(), path):
        if isinstance(frame, Sentence):
            decoder.decode(frame)
    out.append(("+ decoder", time.perf_counter() - t0))

    pipeline = GnssPipeline()
    t0 = time.perf_counter()
    for frame in _frames(pipeline.framer, path):
        if isinstance(frame, Sentence):
            pipeline.feed_sentence(frame, 0.0)
    out.append(("+ assembler, models (GnssPipeline)", time.perf_counter() - t0))

    with open(os.devnull, "w", encoding="utf-8") as sink:
        t0 = time.perf_counter()
        Replayer(GnssPipeline, out=sink, jsonl=True, speed=None).replay([CaptureReader(path)])
        out.append(("+ JSON lines (replay --jsonl)", time.perf_counter() - t0))
    return out


def run_worker(kind: str, path: Path) -> dict[str, float]:
    """Run one measurement in a fresh interpreter and return its figures."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(path)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def machine() -> str:
    """uname -m, CPU model and Python version."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.machine()}, {model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )


def main() -> int:
    """Build the capture, measure both loops, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile one pipeline run")
    parser.add_argument("--stages", action="store_true", help="time each stage in turn")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        kind, path = args.worker
        fn = work_pipeline if kind == "pipeline" else work_plain
        print(json.dumps(fn(Path(path))))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus-repeated.log"
        sentences = build_capture(path, args.sentences)
        size_mb = path.stat().st_size / 1e6
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(work_pipeline, path)
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return 0
        print(f"machine: {machine()}")
        print(f"capture: {sentences} sentences, {size_mb:.1f} MB (GNSS corpus repeated)")
        if args.stages:
            runs = [stages(path) for _ in range(args.runs)]
            print(f"each stage added in turn, in-process, best of {args.runs} runs:")
            for i, (name, _) in enumerate(runs[0]):
                seconds = min(r[i][1] for r in runs)
                print(f"{name:<36} {seconds:>7.2f} s {sentences / seconds:>10,.0f} sentences/s")
            return 0
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.runs):
            for kind in ("plain", "pipeline"):
                r = run_worker(kind, path)
                if kind not in best or r["seconds"] < best[kind]["seconds"]:
                    best[kind] = r
        print(
            f"{'loop':<10} {'seconds':>8} {'sentences/s':>12} {'out':>8} {'peak RSS':>10} "
            f"{'after imports':>14}"
        )
        for kind in ("plain", "pipeline"):
            r = best[kind]
            rate = sentences / r["seconds"]
            print(
                f"{kind:<10} {r['seconds']:>8.2f} {rate:>12,.0f} {int(r['records']):>8} "
                f"{r['rss_peak_kb'] / 1024:>8.1f}MB {r['rss_imports_kb'] / 1024:>12.1f}MB"
            )
        pipe = best["pipeline"]
        print(
            f"pipeline: {int(pipe['sentences'])} sentences framed with a good checksum; "
            f"binary decoding on (UBX, CASIC): {int(pipe['binary_frames'])} binary frames, "
            f"{int(pipe['binary_decoded'])} decoded (the GNSS corpus is NMEA only)"
        )
        ratio = best["plain"]["seconds"] / best["pipeline"]["seconds"]
        print(f"pipeline speed / plain loop speed: {ratio:.2f}x (best of {args.runs} runs each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
