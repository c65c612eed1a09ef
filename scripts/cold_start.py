"""Issue 25's cold-start study through the flows, resumable, in a storage root of its own.

    .venv/bin/python scripts/cold_start.py --root /tmp/cold100k --seeds 44      # one chunk
    .venv/bin/python scripts/cold_start.py --root /tmp/cold100k --seeds 45 46   # the next ones
    .venv/bin/python scripts/cold_start.py --root /tmp/cold1m --dataset movielens-1m \\
        --backbones sasrec --variants id genair-id --seeds 44
    .venv/bin/python scripts/cold_start.py --root /tmp/cold100k --variants genair-id \\
        --adapter-dropout 0.5 --tag adrop --seeds 44 45 46       # a remedy, runs named apart

Each call:
1. the first time only: ingests the whole log and chooses T
   (genair_core.recommenders.cold_start.choose_as_of: the latest midnight UTC with at least 5% of
   the items new and 200 new-item targets in each half of the time after it), kept in
   ROOT/study.json;
2. `genair run` as of T (`[dataset] as_of`): archetypes, calibration and the runs of these seeds,
   every run already finished reused (a run's key covers its tables, so they must be and are the
   tables as of T again);
3. `genair refresh --recommenders never` without as_of: the later items' archetypes, pooled with
   the stored bases and projected through the adapter trained as of T (`max_drift = inf`: the
   pairs after T never retrain it, however many);
4. `genair cold-start --as-of T`: every finished run and the baselines score every interaction
   after T (reports/cold_start.md).
The wall time of each step is appended to ROOT/timings.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from genair_core.recommenders.cold_start import choose_as_of
from storage.store import Store

BIN = Path(sys.executable).parent
VARIANTS = ("id", "llm", "genair", "genair-warm", "genair-id")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the study's own folder")
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--backbones", nargs="+", default=["sasrec", "gru4rec"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[44])
    parser.add_argument("--llm-max-new-tokens", type=int, default=None)
    parser.add_argument(
        "--adapter-dropout",
        type=float,
        default=0.0,
        help="train these runs with [recommenders.model] adapter_dropout (give them a --tag)",
    )
    parser.add_argument("--tag", default="", help="[recommenders] tag: runs named apart")
    parser.add_argument(
        "--recalibrate",
        action="store_true",
        help="retrain the adapter in the run as of T (a root whose adapter saw later pairs)",
    )
    return parser.parse_args()


def config_text(args: argparse.Namespace, as_of: datetime | None, seeds: list[int]) -> str:
    lines = [
        "[storage]",
        'root = "data"',
        "[dataset]",
        f'name = "{args.dataset}"',
    ]
    if as_of is not None:
        lines.append(f"as_of = {as_of.isoformat()}")
    if args.llm_max_new_tokens:
        lines += ["[llm]", f"max_new_tokens = {args.llm_max_new_tokens}"]
    lines += [
        "[calibration]",
        "max_drift = inf",
        "[recommenders]",
        f"backbones = {json.dumps(args.backbones)}",
        f"variants = {json.dumps(args.variants)}",
        f"seeds = {json.dumps(seeds)}",
    ]
    if args.tag:
        lines.append(f'tag = "{args.tag}"')
    if args.adapter_dropout:
        lines += ["[recommenders.model]", f"adapter_dropout = {args.adapter_dropout}"]
    return "\n".join(lines) + "\n"


def genair(
    args: argparse.Namespace, step: str, *command: str, env: dict[str, str] | None = None
) -> None:
    started = time.monotonic()
    print(f"{datetime.now():%H:%M:%S} genair {' '.join(command)}", flush=True)
    config = args.root / "genair.toml"
    command_env = {**os.environ, **(env or {})}
    done = subprocess.run([str(BIN / "genair"), "--config", str(config), *command], env=command_env)
    seconds = time.monotonic() - started
    with open(args.root / "timings.jsonl", "a") as out:
        record = {"step": step, "seeds": args.seeds, "seconds": round(seconds, 1)}
        out.write(json.dumps({**record, "rc": done.returncode, "at": datetime.now().isoformat()}))
        out.write("\n")
    print(f"  {step}: {seconds / 60:.1f} min (rc {done.returncode})", flush=True)
    if done.returncode != 0:
        sys.exit(done.returncode)


def main() -> None:
    args = parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    os.chdir(args.root)
    study = args.root / "study.json"
    config = args.root / "genair.toml"
    if study.exists():
        as_of = datetime.fromisoformat(json.loads(study.read_text())["as_of"])
    else:
        config.write_text(config_text(args, None, args.seeds))
        genair(args, "ingest the whole log", "run", "--until", "ingest")
        interactions = Store(args.root / "data").read_table("interactions")
        as_of = choose_as_of(interactions)
        study.write_text(json.dumps({"as_of": as_of.isoformat(), "dataset": args.dataset}))
    print(f"T = {as_of.isoformat()}", flush=True)
    config.write_text(config_text(args, as_of, args.seeds))
    retrain = {"GENAIR_CALIBRATION__RETRAIN": "true"} if args.recalibrate else None
    genair(args, "train as of T", "run", env=retrain)
    config.write_text(config_text(args, None, args.seeds))
    genair(args, "refresh to the end of the log", "refresh", "--recommenders", "never")
    genair(args, "cold-start evaluation", "cold-start", "--as-of", as_of.isoformat())
    print((args.root / "data" / "reports" / "cold_start.md").read_text())


if __name__ == "__main__":
    main()
