"""Run a command and report the peak resident memory of its whole process tree.

    .venv/bin/python scripts/peak_rss.py -- make run

`/usr/bin/time -v` reports the largest single process; the pipeline's vLLM engines run in child
processes, so this samples the sum over the tree as well: RSS (which counts pages shared between
processes, such as the torch libraries, once per process) and PSS (which splits each shared page
among the processes that map it, so the sum is the memory the tree really holds).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time

import psutil


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    # Reading every process's smaps costs: at 0.5 s this script took 14% of a core during `make
    # run`. The tree's memory grows over seconds (model loads), so 2 s misses little.
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    args = parser.parse_args()
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("give a command after --")
    return args


def tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) over the process tree, in bytes."""
    rss = pss = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # ended between listing and reading
            info = proc.memory_full_info()
            rss += info.rss
            pss += info.pss
    return rss, pss


def main() -> int:
    args = parse_args()
    start = time.monotonic()
    child = subprocess.Popen(args.command)
    root = psutil.Process(child.pid)
    peak_rss = peak_pss = 0
    while child.poll() is None:
        try:
            rss, pss = tree_memory(root)
        except psutil.NoSuchProcess:
            break
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(args.interval)
    code = child.wait()
    print(
        f"peak_pss_tree_gib={peak_pss / 2**30:.2f} peak_rss_tree_gib={peak_rss / 2**30:.2f} "
        f"wall_s={time.monotonic() - start:.0f} exit={code}",
        file=sys.stderr,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
