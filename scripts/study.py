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

from storage.sql import connect
from storage.store import Store

BIN = Path(sys.executable).parent
ALPHAS = ("0.0001", "0.001", "0.01", "0.1", "1")
TAUS = ("1", "4")
SWEEP_BACKBONES = ("sasrec", "gru4rec")


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
    variants = ["id", "llm", "genair", "genair-warm", "genair-id"]
    return [
        (
            "",
            {
                "GENAIR_RECOMMENDERS__BACKBONES": '["sasrec", "gru4rec", "bert4rec"]',
                "GENAIR_RECOMMENDERS__VARIANTS": json.dumps(variants),
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


if __name__ == "__main__":
    main()
