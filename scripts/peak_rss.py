"""Run a command and report the peak resident memory of its whole process tree.

    .venv/bin/python scripts/peak_rss.py -- make run

`/usr/bin/time -v` reports the largest single process; the pipeline's vLLM engines run in child
processes, so this samples the sum over the tree (every 0.2 s) as well.
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
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args()
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("give a command after --")
    return args


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # ended between listing and reading
            total += proc.memory_info().rss
    return total


def main() -> int:
    args = parse_args()
    start = time.monotonic()
    child = subprocess.Popen(args.command)
    root = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, tree_rss(root))
        except psutil.NoSuchProcess:
            break
        time.sleep(args.interval)
    code = child.wait()
    print(
        f"peak_rss_tree_gib={peak / 2**30:.2f} wall_s={time.monotonic() - start:.0f} exit={code}",
        file=sys.stderr,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
