"""Issue 13's study as resumable `genair run` calls: every step is a grid of recommender runs under
its own settings, cached in the storage root, so an interrupted study picks up where it stopped.

    .venv/bin/python scripts/study.py alpha --root /tmp/mr           # the calibration sweep
    .venv/bin/python scripts/study.py alpha --root /tmp/mr --summary # its table, from the store
    .venv/bin/python scripts/study.py table --root /tmp/mr           # 3 x 5 variants x 3 seeds

`alpha`: `genair` on SASRec and GRU4Rec, seed 44, alpha in {1e-4 ... 1} x tau in {1, 4}, each
pair under its own run tag (`a0.001-t4`), chosen by validation NDCG@10 only. `table`: the default
training with every GenAIR-family variant, 3 seeds; its results are `reports/recommenders.md`.
The runs read the tables of a finished `genair run` under --root.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from genair_core.data.sequences import UserSequences
from genair_core.metrics import rank_metrics
from genair_core.recommenders.scoring import test_user_groups
from genair_core.report.results import RunResult, summarize_runs
from storage.recommenders import read_run_tables, read_test_results
from storage.sql import connect
from storage.store import Store
from tasks.settings import load_settings

BIN = Path(sys.executable).parent
ALPHAS = ("0.0001", "0.001", "0.01", "0.1", "1")
TAUS = ("1", "4")
SWEEP_BACKBONES = ("sasrec", "gru4rec")
TABLE_VARIANTS = ("id", "llm", "genair", "genair-warm", "genair-id")
GENAIR_FAMILY = ("genair", "genair-warm", "genair-id")
BACKBONE_ORDER = ("sasrec", "gru4rec", "bert4rec")


def alpha_steps() -> list[tuple[str, dict[str, str]]]:
    return [
        (
            f"a{alpha}-t{tau}",
            {
                "GENAIR_RECOMMENDERS__BACKBONES": json.dumps(SWEEP_BACKBONES),
                "GENAIR_RECOMMENDERS__VARIANTS": '["genair"]',
                "GENAIR_RECOMMENDERS__SEEDS": "[44]",
                "GENAIR_RECOMMENDERS__TRAINING__ALPHA": alpha,
                "GENAIR_RECOMMENDERS__TRAINING__TAU": tau,
            },
        )
        for tau in TAUS
        for alpha in ALPHAS
    ]


def table_steps() -> list[tuple[str, dict[str, str]]]:
    """One grid, seed by seed: a study stopped part-way has every run of its first seeds."""
    return [
        (
            "",
            {
                "GENAIR_RECOMMENDERS__BACKBONES": json.dumps(BACKBONE_ORDER),
                "GENAIR_RECOMMENDERS__VARIANTS": json.dumps(TABLE_VARIANTS),
                "GENAIR_RECOMMENDERS__SEEDS": "[44, 45, 46]",
            },
        )
    ]


STUDIES = {"alpha": alpha_steps, "table": table_steps}


def run_step(root: Path, tag: str, env: dict[str, str]) -> None:
    environment = {
        **os.environ,
        **env,
        "GENAIR_STORAGE__ROOT": str(root),
        "GENAIR_RECOMMENDERS__TAG": tag,
    }
    print(f"== {tag or 'default'}: {env}", flush=True)
    subprocess.run([BIN / "genair", "run", "--from", "negatives"], env=environment, check=True)


def alpha_summary(root: Path) -> str:
    """Validation and test NDCG@10 (full ranking, all users) of each sweep run, and at its best
    epoch the recommendation loss, the calibration loss (negative: minus a weighted mean squared
    distance) and the weighted calibration term's size against L_rec."""
    con = connect(Store(root))
    rows = con.sql(
        """
        WITH m AS (
            SELECT run, backbone,
                max(value) FILTER (WHERE split = 'valid') AS valid,
                max(value) FILTER (WHERE split = 'test') AS test
            FROM metrics
            WHERE protocol = 'full' AND "group" = 'all' AND metric = 'ndcg@10'
              AND regexp_matches(run, '-genair-ce-s44-a')
            GROUP BY ALL
        ), best AS (
            SELECT run, arg_max(epoch, "valid_ndcg@10") AS epoch, count(*) AS epochs
            FROM training_log GROUP BY run
        )
        SELECT m.backbone, regexp_extract(m.run, '-a([^-]+)-t', 1) AS alpha,
            regexp_extract(m.run, '-t([^-]+)$', 1) AS tau, m.valid, m.test, best.epoch,
            best.epochs, t.rec_loss, t.cal_loss
        FROM m JOIN best USING (run) JOIN training_log t ON t.run = m.run AND t.epoch = best.epoch
        ORDER BY m.backbone, CAST(tau AS DOUBLE), CAST(alpha AS DOUBLE)
        """
    ).fetchall()
    lines = [
        "| backbone | α | τ | valid NDCG@10 | test NDCG@10 | best epoch / run | L_rec | L_cal "
        "| α·\\|L_cal\\| / L_rec |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    best: dict[str, tuple[float, str]] = {}
    for backbone, alpha, tau, valid, test, epoch, epochs, rec, cal in rows:
        share = float(alpha) * abs(cal) / rec
        lines.append(
            f"| {backbone} | {alpha} | {tau} | {valid:.4f} | {test:.4f} | {epoch} / {epochs} "
            f"| {rec:.3f} | {cal:.3f} | {share:.2e} |"
        )
        if valid > best.get(backbone, (-1.0, ""))[0]:
            best[backbone] = (valid, f"α = {alpha}, τ = {tau}")
    lines.append("")
    lines += [f"Best on validation, {b}: {choice} ({v:.4f})" for b, (v, choice) in best.items()]
    return "\n".join(lines)


def table_verdict(root: Path, metric: str = "ndcg@10") -> str:
    """Issue 13's target on the table's runs: for each backbone the GenAIR-family variant with the
    best validation `metric` (mean over seeds; test is never looked at to choose), and its test
    `metric` against `id`: change and paired test over all test users, then over the tail
    users alone."""
    store = Store(root)
    con = connect(store)
    valid = con.sql(
        f"""
        SELECT backbone, variant, run, value FROM metrics
        WHERE protocol = 'full' AND split = 'valid' AND "group" = 'all' AND metric = '{metric}'
          AND regexp_matches(run, '^[a-z0-9]+-({"|".join(TABLE_VARIANTS)})-ce-s[0-9]+$')
        """
    ).fetchall()
    runs: dict[tuple[str, str], list[str]] = {}
    scores: dict[tuple[str, str], list[float]] = {}
    for backbone, variant, run, value in valid:
        runs.setdefault((backbone, variant), []).append(run)
        scores.setdefault((backbone, variant), []).append(value)
    tables = read_run_tables(store, ["sequences"])
    data = UserSequences.from_table(tables.sequences, tables.n_items)
    tail_share = load_settings().recommenders.evaluation.tail_share
    tail = test_user_groups(data, tail_share)["tail"]
    ranks, _ = read_test_results(store, [run for names in runs.values() for run in names])
    per_user = {run: rank_metrics(ranks[run]["full"])[metric] for run in ranks}
    lines = [
        f"| backbone | chosen on validation ({metric}, seeds) | test {metric}: id → chosen "
        "| change, p | tail: id → chosen | tail change, p | target met |",
        "|---|---|---|---|---|---|---|",
    ]
    for backbone in sorted({b for b, _ in runs}, key=BACKBONE_ORDER.index):
        family = [(b, v) for b, v in scores if b == backbone and v in GENAIR_FAMILY]
        if (backbone, "id") not in runs or not family:
            continue
        chosen = max(family, key=lambda key: float(np.mean(scores[key])))
        cells = {}
        for group, mask in (("all", slice(None)), ("tail", tail)):
            results = [
                RunResult(b, v, int(run.rsplit("-s", 1)[1]), {metric: per_user[run][mask]})
                for b, v in ((backbone, "id"), chosen)
                for run in runs[(b, v)]
            ]
            base, ours = summarize_runs(results, (metric,))
            cells[group] = (base[metric]["mean"], ours[metric])
        (base_all, all_), (base_tail, tail_) = cells["all"], cells["tail"]
        # The tail gains more in relative terms: tail / base_tail > all / base_all.
        tail_gains_more = tail_["mean"] * base_all > base_tail * all_["mean"]
        met = all_["p"] < 0.05 and all_["mean"] > base_all and tail_gains_more
        lines.append(
            f"| {backbone} | {chosen[1]} ({np.mean(scores[chosen]):.4f}, "
            f"{len(scores[chosen])}) | {base_all:.4f} → {all_['mean']:.4f} "
            f"| {_change(all_)} | {base_tail:.4f} → {tail_['mean']:.4f} | {_change(tail_)} "
            f"| {'yes' if met else 'no'} |"
        )
    lines += [
        "",
        f"Target: p < 0.05 and a gain over all test users, and a larger relative gain on the "
        f"{int(tail.sum())} tail users (the held-out item among the least popular items holding "
        f"{tail_share:.0%} of training interactions). p: two-sided Wilcoxon signed-rank test on "
        "per-user values averaged over the seeds both variants have.",
    ]
    return "\n".join(lines)


def _change(cell: dict) -> str:
    change = "n/a" if cell["rel_pct"] is None else f"{cell['rel_pct']:+.1f}%"
    return f"{change}, p = {cell['p']:.2g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--root", type=Path, required=True, help="storage root of a finished run")
    parser.add_argument("--summary", action="store_true", help="print the table; train nothing")
    args = parser.parse_args(argv)
    if not args.summary:
        for tag, env in STUDIES[args.study]():
            run_step(args.root, tag, env)
    if args.study == "alpha":
        print(alpha_summary(args.root))
    else:
        print((args.root / "reports" / "recommenders.md").read_text())
        print(table_verdict(args.root))


if __name__ == "__main__":
    main()
