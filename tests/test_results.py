"""The results table: the paired test, aggregation over seeds and the Markdown rendering."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from genair_core.report.results import (
    BETTER,
    WORSE,
    RunResult,
    paired_test,
    render_results_markdown,
    summarize_runs,
)

N_USERS = 300


def test_paired_test_identical_is_one():
    a = np.random.default_rng(0).random(50)
    assert paired_test(a, a.copy()) == 1.0
    # Float noise from averaging is no difference.
    assert paired_test(np.array([0.1 + 0.2, 1.0]), np.array([0.3, 1.0])) == 1.0


def test_paired_test_clear_shift_is_significant():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    b = a + 0.1 + 0.01 * rng.normal(size=200)
    assert paired_test(a, b) < 1e-10
    assert paired_test(b, a) == pytest.approx(paired_test(a, b))


def test_paired_test_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        paired_test(np.zeros(3), np.zeros(4))


def hits(n: int) -> dict[str, np.ndarray]:
    """The first n users hit, the rest miss; NDCG is half the hit."""
    hr = (np.arange(N_USERS) < n).astype(np.float64)
    return {"hr@10": hr, "ndcg@10": hr / 2}


def run(backbone: str, variant: str, seed: int, n: int) -> RunResult:
    return RunResult(backbone, variant, seed, hits(n))


RUNS = [
    # Deliberately out of table order.
    run("sasrec", "zeta", 0, 90),
    run("sasrec", "genair", 0, 150),
    run("sasrec", "genair", 1, 160),
    run("sasrec", "genair", 2, 170),
    run("sasrec", "id", 0, 90),
    run("sasrec", "id", 1, 100),
    run("sasrec", "id", 2, 110),
    run("sasrec", "llm", 2, 110),  # the same as id on the one seed they share
    run("sasrec", "gen-only", 0, 30),
    run("bert4rec", "input-only", 0, 120),
    run("bert4rec", "id", 0, 120),
    run("bert4rec", "alpha", 0, 60),
]


def test_summarize_means_stds_and_order():
    rows = summarize_runs(RUNS)
    order = [(r["backbone"], r["variant"]) for r in rows]
    assert order == [
        ("sasrec", "id"),
        ("sasrec", "llm"),
        ("sasrec", "genair"),
        ("sasrec", "gen-only"),
        ("sasrec", "zeta"),
        ("bert4rec", "id"),
        ("bert4rec", "input-only"),
        ("bert4rec", "alpha"),
    ]
    by = {(r["backbone"], r["variant"]): r for r in rows}
    sid = by["sasrec", "id"]
    assert sid["seeds"] == 3
    assert sid["users"] == N_USERS
    assert sid["hr@10"]["mean"] == pytest.approx(1 / 3)
    assert sid["hr@10"]["std"] == pytest.approx(np.std([0.3, 1 / 3, 11 / 30], ddof=1))
    assert sid["ndcg@10"]["mean"] == pytest.approx(1 / 6)
    assert sid["hr@10"]["p"] is None
    assert sid["hr@10"]["rel_pct"] is None
    assert sid["hr@10"]["mark"] == ""

    genair = by["sasrec", "genair"]["hr@10"]
    assert genair["mean"] == pytest.approx(160 / 300)
    assert genair["std"] == pytest.approx(10 / 300)
    assert genair["rel_pct"] == pytest.approx(60.0)
    assert genair["p"] < 1e-10
    assert genair["mark"] == BETTER

    llm = by["sasrec", "llm"]["hr@10"]
    assert llm["std"] == 0.0  # one seed
    assert llm["p"] == 1.0  # seed 2 only: identical to id's seed 2
    assert llm["mark"] == ""
    assert llm["rel_pct"] == pytest.approx(100 * (110 / 100 - 1))

    worse = by["sasrec", "gen-only"]["ndcg@10"]
    assert worse["mark"] == WORSE
    assert worse["rel_pct"] == pytest.approx(-70.0)

    assert by["sasrec", "zeta"]["hr@10"]["p"] == 1.0  # seed 0 only: the same 90 hits
    assert by["bert4rec", "input-only"]["hr@10"]["rel_pct"] == pytest.approx(0.0)
    assert by["bert4rec", "alpha"]["hr@10"]["mark"] == WORSE


def test_summarize_without_a_shared_seed_or_baseline():
    rows = summarize_runs(
        [run("gru", "id", 0, 50), run("gru", "llm", 1, 100), run("x", "llm", 0, 9)]
    )
    by = {(r["backbone"], r["variant"]): r["hr@10"] for r in rows}
    assert by["gru", "llm"]["p"] is None
    assert by["gru", "llm"]["rel_pct"] == pytest.approx(100.0)
    assert by["x", "llm"]["p"] is None
    assert by["x", "llm"]["rel_pct"] is None


def test_summarize_rejects_inconsistent_runs():
    with pytest.raises(ValueError, match="given twice"):
        summarize_runs([run("s", "id", 0, 1), run("s", "id", 0, 2)])
    short = RunResult("s", "llm", 0, {"hr@10": np.zeros(5), "ndcg@10": np.zeros(5)})
    with pytest.raises(ValueError, match="same users"):
        summarize_runs([run("s", "id", 0, 1), short])
    with pytest.raises(ValueError, match="lacks 'ndcg@10'"):
        summarize_runs([RunResult("s", "id", 0, {"hr@10": np.zeros(3)})])


def test_render_results_markdown():
    text = render_results_markdown(summarize_runs(RUNS), title="MovieLens-100K")
    lines = text.splitlines()
    assert lines[0] == "## MovieLens-100K"
    assert lines[2] == "| Backbone | Variant | Seeds | HR@10 | NDCG@10 |"
    assert lines[3] == "| --- | --- | --- | ---: | ---: |"
    body = lines[4:12]
    assert [line.split(" | ")[1] for line in body] == [
        "id",
        "llm",
        "genair",
        "gen-only",
        "zeta",
        "id",
        "input-only",
        "alpha",
    ]
    assert body[0] == "| sasrec | id | 3 | 0.3333 ± 0.0333 | 0.1667 ± 0.0167 |"
    assert (
        body[2] == "| sasrec | genair | 3 | 0.5333 ± 0.0333 ▲ +60.0% | 0.2667 ± 0.0167 ▲ +60.0% |"
    )
    assert body[1] == "| sasrec | llm | 1 | 0.3667 +10.0% | 0.1833 +10.0% |"  # no spread
    assert "▼ -70.0%" in body[3]
    legend = lines[13]
    assert "over 1–3 seeds (column Seeds)" in legend
    assert "300 test users" in legend
    assert "Wilcoxon signed-rank" in legend
    assert "p < 0.05" in legend
    assert "`id`" in legend


def test_render_is_deterministic_and_handles_no_rows():
    rows = summarize_runs(RUNS)
    # Any row order with the same backbone order renders the same table.
    shuffled = [r for r in reversed(rows) if r["backbone"] == "sasrec"]
    shuffled += [r for r in reversed(rows) if r["backbone"] == "bert4rec"]
    assert render_results_markdown(shuffled) == render_results_markdown(rows)
    assert render_results_markdown(rows).startswith("| Backbone")
    one_seed = summarize_runs([run("s", "id", 0, 10), run("s", "llm", 0, 10)])
    assert "over 1 seed of" in render_results_markdown(one_seed)
    assert "No runs" in render_results_markdown([])


def test_group_table_tests_each_group_on_its_own_users():
    from genair_core.report.results import render_group_table

    # Users 0-99 are the tail: genair hits all of them on both seeds, id only the first 20 and
    # 40. On the head (100-299) both hit the same 50 users.
    tail = np.arange(N_USERS) < 100
    masks = {"tail": tail, "head": ~tail}

    def runs_of(variant: str, tail_hits: tuple[int, int]) -> list[RunResult]:
        out = []
        for seed, n in zip((44, 45), tail_hits, strict=True):
            hr = (np.arange(N_USERS) < n) | (
                (np.arange(N_USERS) >= 100) & (np.arange(N_USERS) < 150)
            )
            out.append(RunResult("sasrec", variant, seed, {"ndcg@10": hr.astype(np.float64) / 2}))
        return out

    runs = runs_of("genair", (100, 100)) + runs_of("id", (20, 40))
    table = render_group_table(runs, masks).splitlines()
    assert table[0] == "| Backbone | Variant | tail (100 users) | head (200 users) |"
    assert table[2] == "| sasrec | id | 0.1500 | 0.1250 |"
    # Tail: 0.5 against 0.15, significant; head: the same users hit, no test to pass.
    assert table[3] == f"| sasrec | genair | 0.5000 {BETTER} +233.3% | 0.1250 +0.0% |"
    assert render_group_table([], masks) == "_No runs._\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mean of an empty group
        empty = render_group_table(runs, {**masks, "none": np.zeros(N_USERS, bool)})
    assert empty.splitlines()[3].endswith("| n/a |")
    assert "none (0 users)" in empty
