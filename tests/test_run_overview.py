"""The end of a run on the terminal: the stages and the results table
(genair_core.report.run_summary)."""

from __future__ import annotations

from datetime import UTC, datetime

from genair_core.report.run_summary import render_run_overview, results_table


def metric(backbone, variant, seed, name, value, split="test", protocol="full", group="all"):
    return {
        "backbone": backbone,
        "variant": variant,
        "seed": seed,
        "metric": name,
        "value": value,
        "split": split,
        "protocol": protocol,
        "group": group,
    }


def test_results_table_is_mean_and_std_over_seeds_per_backbone_and_variant():
    rows = [
        metric("popularity", "-", 0, "ndcg@10", 0.03),
        metric("popularity", "-", 0, "hr@10", 0.06),
        metric("sasrec", "genair", 1, "ndcg@10", 0.10),
        metric("sasrec", "genair", 2, "ndcg@10", 0.20),
        metric("sasrec", "genair", 1, "hr@10", 0.30),
        metric("sasrec", "genair", 2, "hr@10", 0.40),
        metric("sasrec", "id", 1, "ndcg@10", 0.05),
        metric("sasrec", "id", 1, "hr@10", 0.09),
        # Not the table's: another split, protocol, group or metric.
        metric("sasrec", "id", 1, "ndcg@10", 0.9, split="valid"),
        metric("sasrec", "id", 1, "ndcg@10", 0.9, protocol="sampled"),
        metric("sasrec", "id", 1, "ndcg@10", 0.9, group="tail"),
        metric("sasrec", "id", 1, "mrr", 0.9),
    ]
    # The columns, rows and cells of reports/recommenders.md's table; no paired test (the stored
    # rows hold each run's mean, not its per-user values), so no mark, only the change from `id`.
    assert results_table(rows).splitlines() == [
        "| Backbone | Variant | Seeds | HR@10 | NDCG@10 |",
        "| --- | --- | --- | ---: | ---: |",
        "| sasrec | id | 1 | 0.0900 | 0.0500 |",
        "| sasrec | genair | 2 | 0.3500 ± 0.0707 +288.9% | 0.1500 ± 0.0707 +200.0% |",
        "",
        "Popularity (training counts): HR@10 0.0600, NDCG@10 0.0300.",
    ]


def test_no_finished_run_says_so():
    assert results_table([]) == "(no recommender run has finished)\n"
    popularity = [
        metric("popularity", "-", 0, "ndcg@10", 0.03),
        metric("popularity", "-", 0, "hr@10", 0.06),
    ]
    assert results_table(popularity).splitlines() == [
        "(no recommender run has finished)",
        "",
        "Popularity (training counts): HR@10 0.0600, NDCG@10 0.0300.",
    ]


def test_the_overview_is_the_run_and_one_line_per_stage():
    run = {
        "run_id": "r1",
        "flow": "genair-full",
        "state": "Completed",
        "started_at": datetime(2026, 11, 30, 10, 0, tzinfo=UTC),
        "ended_at": datetime(2026, 11, 30, 10, 5, 6, tzinfo=UTC),
    }
    steps = [
        {"step": "ingest", "skipped": False, "seconds": 2.5, "rows_in": 0, "rows_out": {"items": 4}}
    ]
    text = render_run_overview(
        {"ingest": {"skipped": False}, "split": {"skipped": True}}, run, steps
    )
    lines = text.splitlines()
    assert lines[0] == "run r1 (genair-full): Completed in 306 s"
    assert lines[2].startswith("| stage | state | seconds |")
    assert lines[4].startswith("| ingest | ran | 2.5 |")
    assert lines[5].startswith("| split | up to date |")
    assert len(lines) == 6
