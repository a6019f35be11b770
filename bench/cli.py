"""Start-up time of the command line: median wall time of a fresh `python -m terminal_gw ...`.

    python bench/cli.py [--runs 21] [--tree PATH ...]

Runs each command `--runs` times in a fresh interpreter, interleaved (one of each in turn, so a
burst of load on the machine hits every command alike), and prints the median and the quartiles
of each in ms, with `python -c pass` (the interpreter's own start-up) as the reference, and the
median CPU time (user + system, of the child): on a machine shared with other work the wall
time mostly measures the wait for a CPU, the CPU time much less so. `--tree PATH` times the
package of another checkout side by side (e.g. the commit before a change): its `PYTHONPATH` is
PATH. `--importtime` prints the slowest imports of each command instead (`python -X
importtime`).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: label, arguments after `python` (None: the package under test is not involved).
COMMANDS: list[tuple[str, list[str]]] = [
    ("python -c pass", ["-c", "pass"]),
    ("terminal-gw --help", ["-m", "terminal_gw", "--help"]),
    ("terminal-gw status --help", ["-m", "terminal_gw", "status", "--help"]),
    ("terminal-gw schema", ["-m", "terminal_gw", "schema"]),
]


def _env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGW_")}
    env["PYTHONPATH"] = str(tree)
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_once(args: list[str], tree: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one run, output to /dev/null; a failing run stops the bench."""
    cpu = _children_cpu()
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, *args],
        env=_env(tree),
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"{args} failed in {tree}: {res.stderr.decode()[-500:]}")
    return took, _children_cpu() - cpu


def slowest_imports(args: list[str], tree: Path, top: int = 12) -> list[tuple[int, str]]:
    """The `top` imports with the largest cumulative time (us), from `-X importtime`."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        env=_env(tree),
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    rows: list[tuple[int, str]] = []
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        rows.append((int(cumulative), name.rstrip()))
    return sorted(rows, reverse=True)[:top]


def main() -> int:
    """Time every command in every tree and print a table in milliseconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=21, help="runs of each command")
    parser.add_argument(
        "--tree", type=Path, action="append", default=[], help="another checkout to time too"
    )
    parser.add_argument("--importtime", action="store_true", help="the slowest imports instead")
    args = parser.parse_args()
    trees = [REPO, *(t.resolve() for t in args.tree)]
    if args.importtime:
        for tree in trees:
            for label, cmd in COMMANDS[1:]:
                print(f"{label} ({tree}): cumulative ms, slowest imports")
                for us, name in slowest_imports(cmd, tree):
                    print(f"  {us / 1000:8.1f}  {name}")
        return 0
    runs: dict[tuple[Path, str], list[tuple[float, float]]] = {}
    for _ in range(args.runs):
        for tree in trees:
            for label, cmd in COMMANDS:
                if label.startswith("python") and tree != REPO:
                    continue
                runs.setdefault((tree, label), []).append(time_once(cmd, tree))
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" load average {os.getloadavg()[0]:.2f}, {args.runs} runs each"
    )
    print(
        "| command | tree | median wall ms | quartiles ms | minus `python -c pass` |"
        " median CPU ms | CPU minus `python -c pass` |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    ref = runs[(REPO, COMMANDS[0][0])]
    base = statistics.median(w for w, _ in ref)
    base_cpu = statistics.median(c for _, c in ref)
    for (tree, label), pairs in runs.items():
        walls = [w for w, _ in pairs]
        q1, _, q3 = statistics.quantiles(walls, n=4) if len(walls) > 1 else walls * 3
        med = statistics.median(walls)
        cpu = statistics.median(c for _, c in pairs)
        where = "this" if tree == REPO else str(tree)
        ref_row = label.startswith("python")
        extra = "" if ref_row else f"{(med - base) * 1000:.0f}"
        extra_cpu = "" if ref_row else f"{(cpu - base_cpu) * 1000:.0f}"
        print(
            f"| `{label}` | {where} | {med * 1000:.0f} | {q1 * 1000:.0f}-{q3 * 1000:.0f} |"
            f" {extra} | {cpu * 1000:.0f} | {extra_cpu} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
