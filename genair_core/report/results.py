"""Runs (backbone x variant x seed) aggregated into the results table an ML engineer reads.

The table's rows (table_rows: one column order, RESULT_METRICS, and one row order, table_order)
are what every rendering shows: reports/recommenders.md (summarize_runs, with the paired test), the
HTML report (genair_core.report) and the terminal at the end of a run
(genair_core.report.run_summary.results_table, from the stored `metrics` rows).

A cell is the mean ± std over seeds of each run's mean metric, so the spread shows how much a
number moves with the training seed alone. Whether a variant beats the `id` baseline of the same
backbone is a paired test on the per-user values (every run scores the same test users in the same
order), each user's value averaged over the seeds both rows share: with thousands of users this
detects differences that a comparison of a handful of seed means cannot.

The test is the two-sided Wilcoxon signed-rank test with zero_method="wilcox": users on whom both
models score the same (for HR@k and NDCG@k most of them, both missing or both at the same rank)
say nothing about which is better and are dropped. For a 0/1 metric on one seed the test then
reduces to the sign test on the users where exactly one model hits (McNemar's test), the standard
paired test for hit rates. "pratt" would keep those ties in the ranking, which makes the p-value
depend on how many users neither model reaches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from genair_core.config import RecommenderConfig
from genair_core.metrics import rank_metrics

# The order of variants in the table; any other variant follows, alphabetically.
VARIANT_ORDER = ("id", "llm", "genair", "genair-warm", "genair-id", "input-only", "gen-only")
BETTER, WORSE = "▲", "▼"
# User groups of the METRICS table: held-out item in the long tail or not; short or long history.
GROUPS = ("tail", "head", "short", "long")


def paired_test(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value for paired per-user values a and b; 1.0 if a == b.

    Differences are rounded to 12 decimals first, so float noise from averaging over seeds neither
    makes a nonzero difference out of an equal pair nor splits a tie between equal magnitudes.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two arrays of one shape, got {a.shape}, {b.shape}")
    diff = np.round(a - b, 12)
    if np.isnan(diff).any():
        raise ValueError("paired values contain NaN")
    if not diff.any():
        return 1.0
    return float(stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)


@dataclass(frozen=True, eq=False)  # eq=False: == on dicts of arrays would be ambiguous
class RunResult:
    """One trained model's per-user test metrics, e.g. rank_metrics of its full-ranking ranks.

    Every run's arrays hold the same users in the same order.
    """

    backbone: str
    variant: str
    seed: int
    per_user: dict[str, np.ndarray]


# The results table's metric columns, in order, wherever it is shown: reports/recommenders.md, the
# HTML report and the terminal at the end of a run.
RESULT_METRICS = ("hr@10", "ndcg@10")


def table_rows(
    run_means: Mapping[tuple[str, str, int], Mapping[str, float]],
    metrics: tuple[str, ...] = RESULT_METRICS,
    baseline: str = "id",
) -> list[dict]:
    """The results table's rows from each run's mean metrics ({(backbone, variant, seed): {metric:
    mean}}): one row per (backbone, variant), in table order (see table_order).

    A row is {"backbone", "variant", "seeds": number of seeds, "baseline", metric: {"mean", "std",
    "p", "rel_pct", "mark"}} for each metric: mean and std (ddof=1, 0 for one seed) over seeds of
    the run means; for a variant other than `baseline`, rel_pct is 100 * (mean / baseline mean - 1),
    None for the baseline itself, when the backbone has no baseline run, or when the baseline mean
    is 0. p is None and mark "": only summarize_runs, which has the per-user values, tests them.
    """
    grouped: dict[tuple[str, str], list[Mapping[str, float]]] = {}
    for (backbone, variant, seed), means in run_means.items():
        for metric in metrics:
            if metric not in means:
                raise ValueError(f"{backbone}/{variant} seed {seed} lacks {metric!r}")
        grouped.setdefault((backbone, variant), []).append(means)
    rows = []
    for backbone, variant in table_order(list(grouped)):
        by_seed = grouped[backbone, variant]
        base = grouped.get((backbone, baseline)) if variant != baseline else None
        row: dict = {"backbone": backbone, "variant": variant, "seeds": len(by_seed)}
        row["baseline"] = baseline
        for metric in metrics:
            run_means_of_metric = np.array([means[metric] for means in by_seed])
            mean = float(run_means_of_metric.mean())
            std = float(run_means_of_metric.std(ddof=1)) if len(by_seed) >= 2 else 0.0
            cell = {"mean": mean, "std": std, "p": None, "rel_pct": None, "mark": ""}
            if base is not None:
                base_mean = float(np.mean([means[metric] for means in base]))
                if base_mean != 0.0:
                    cell["rel_pct"] = 100.0 * (mean / base_mean - 1.0)
            row[metric] = cell
        rows.append(row)
    return rows


def metric_table_rows(
    metric_rows: Sequence[Mapping[str, object]], metrics: tuple[str, ...] = RESULT_METRICS
) -> list[dict]:
    """The results table's rows (table_rows) from `metrics` rows: test split, full ranking, all
    users, each run's mean. Other splits, protocols, groups and metrics are left out."""
    run_means: dict[tuple[str, str, int], dict[str, float]] = {}
    for row in metric_rows:
        if (row["split"], row["protocol"], row["group"]) != ("test", "full", "all"):
            continue
        if row["metric"] not in metrics:
            continue
        run = (str(row["backbone"]), str(row["variant"]), int(row["seed"]))  # type: ignore[call-overload]
        run_means.setdefault(run, {})[str(row["metric"])] = float(row["value"])  # type: ignore[arg-type]
    return table_rows(run_means, metrics)


def summarize_runs(
    runs: list[RunResult],
    metrics: tuple[str, ...] = RESULT_METRICS,
    baseline: str = "id",
    alpha: float = 0.05,
) -> list[dict]:
    """The results table's rows (table_rows) of runs' per-user values, with the paired test.

    Each row also holds "users" and "alpha"; for a variant other than `baseline`, a cell's p is
    the paired test against the baseline of the same backbone on per-user values averaged over
    the seeds both have, and mark is BETTER or WORSE when p < alpha (else ""). p is None for the
    baseline itself and when the backbone has no baseline run or no seed in common with it.
    """
    grouped = _group(runs, metrics)
    n_users = next(iter(runs[0].per_user.values())).size if runs else 0
    run_means = {
        (backbone, variant, seed): {m: float(values[m].mean()) for m in metrics}
        for (backbone, variant), by_seed in grouped.items()
        for seed, values in by_seed.items()
    }
    rows = table_rows(run_means, metrics, baseline)
    for row in rows:
        row |= {"users": n_users, "alpha": alpha}
        base = grouped.get((row["backbone"], baseline)) if row["variant"] != baseline else None
        if base is None:
            continue
        by_seed = grouped[row["backbone"], row["variant"]]
        for metric in metrics:
            _test_against_baseline(row[metric], by_seed, base, metric, alpha)
    return rows


def _group(
    runs: list[RunResult], metrics: tuple[str, ...]
) -> dict[tuple[str, str], dict[int, dict[str, np.ndarray]]]:
    """{(backbone, variant): {seed: per_user}}, checking every run covers the same users."""
    grouped: dict[tuple[str, str], dict[int, dict[str, np.ndarray]]] = {}
    n_users = None
    for run in runs:
        for metric in metrics:
            if metric not in run.per_user:
                raise ValueError(f"{run.backbone}/{run.variant} seed {run.seed} lacks {metric!r}")
            size = np.asarray(run.per_user[metric]).shape
            n_users = size if n_users is None else n_users
            if size != n_users or len(size) != 1:
                raise ValueError(
                    f"{run.backbone}/{run.variant} seed {run.seed}: {metric} has shape {size}, "
                    f"other runs {n_users}; every run must score the same users"
                )
        by_seed = grouped.setdefault((run.backbone, run.variant), {})
        if run.seed in by_seed:
            raise ValueError(f"{run.backbone}/{run.variant} seed {run.seed} given twice")
        by_seed[run.seed] = {m: np.asarray(run.per_user[m], dtype=np.float64) for m in metrics}
    return grouped


def _test_against_baseline(
    cell: dict,
    by_seed: dict[int, dict[str, np.ndarray]],
    base: dict[int, dict[str, np.ndarray]],
    metric: str,
    alpha: float,
) -> None:
    """Set a table_rows cell's p and mark: the paired test on the seeds both rows have."""
    shared = sorted(by_seed.keys() & base.keys())
    if not shared:
        return
    ours = np.mean([by_seed[s][metric] for s in shared], axis=0)
    theirs = np.mean([base[s][metric] for s in shared], axis=0)
    p = paired_test(ours, theirs)
    cell["p"] = p
    shift = ours.mean() - theirs.mean()
    if p < alpha and shift != 0.0:
        cell["mark"] = BETTER if shift > 0.0 else WORSE


def variant_sort_key(variant: str) -> tuple[int, str]:
    """VARIANT_ORDER first, in that order; other variants alphabetically."""
    if variant in VARIANT_ORDER:
        return (VARIANT_ORDER.index(variant), "")
    return (len(VARIANT_ORDER), variant)


def table_order(keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(backbone, variant) pairs in the results table's order: backbones as they first appear,
    variants by variant_sort_key within each."""
    backbones = list(dict.fromkeys(backbone for backbone, _ in keys))
    return sorted(keys, key=lambda key: (backbones.index(key[0]), variant_sort_key(key[1])))


def render_results_markdown(
    rows: list[dict],
    metrics: tuple[str, ...] = RESULT_METRICS,
    title: str | None = None,
) -> str:
    """A Markdown table of summarize_runs() rows and its legend (markdown_table)."""
    lines = [f"## {title}", ""] if title else []
    if not rows:
        return "\n".join([*lines, "_No runs._", ""])
    lines += markdown_table(rows, metrics)
    lines += ["", _legend(rows), ""]
    return "\n".join(lines)


def markdown_table(rows: list[dict], metrics: tuple[str, ...] = RESULT_METRICS) -> list[str]:
    """The lines of a Markdown table of table_rows() rows, one per backbone × variant, in table
    order (whatever order the rows come in).

    A cell reads "0.1234 ± 0.0056 ▲ +3.2%": mean ± std over seeds (no ± for a single seed), the
    mark when the paired test against the baseline is significant, and the change relative to the
    baseline mean.
    """
    header = ["Backbone", "Variant", "Seeds", *(m.upper() for m in metrics)]
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([" --- "] * 3 + [" ---: "] * len(metrics)) + "|")
    by_key = {(row["backbone"], row["variant"]): row for row in rows}
    for row in (by_key[key] for key in table_order(list(by_key))):
        cells = [_escape(row["backbone"]), _escape(row["variant"]), str(row["seeds"])]
        cells += [_format_cell(row[m], spread=row["seeds"] > 1) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def popularity_line(means: Mapping[str, float], metrics: tuple[str, ...] = RESULT_METRICS) -> str:
    """The popularity baseline under a results table: its mean of each metric ({metric: mean})."""
    shown = ", ".join(f"{m.upper()} {means[m]:.4f}" for m in metrics if m in means)
    return f"Popularity (training counts): {shown}."


def _format_cell(cell: dict, spread: bool) -> str:
    if math.isnan(cell["mean"]):
        return "n/a"
    text = f"{cell['mean']:.4f}"
    if spread:
        text += f" ± {cell['std']:.4f}"
    if cell["mark"]:
        text += f" {cell['mark']}"
    if cell["rel_pct"] is not None:
        text += f" {cell['rel_pct']:+.1f}%"
    return text


def seeds_phrase(rows: list[dict]) -> str:
    """How many seeds the results rows average over, for a legend: "3 seeds", "1–3 seeds
    (column Seeds)"."""
    seeds = sorted({row["seeds"] for row in rows})
    if len(seeds) > 1:
        return f"{seeds[0]}–{seeds[-1]} seeds (column Seeds)"
    return f"{seeds[0]} seed" + ("s" if seeds[0] != 1 else "")


def _legend(rows: list[dict]) -> str:
    baseline, alpha, users = rows[0]["baseline"], rows[0]["alpha"], rows[0]["users"]
    most_seeds = max(row["seeds"] for row in rows)
    return (
        f"{'Mean ± std' if most_seeds > 1 else 'Value'} over {seeds_phrase(rows)} of each run's "
        f"mean over {users:,} test users. "
        f"{BETTER} / {WORSE}: significantly better / worse than `{baseline}` of the same backbone "
        f"(two-sided Wilcoxon signed-rank test on per-user values averaged over the shared seeds, "
        f"p < {alpha:g}); % is the change relative to the `{baseline}` mean."
    )


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_group_table(
    runs: list[RunResult],
    masks: dict[str, np.ndarray],
    metric: str = "ndcg@10",
    baseline: str = "id",
    alpha: float = 0.05,
) -> str:
    """`metric` within each user group, one line per backbone × variant. `masks`: {group: boolean
    mask over the runs' users}. A cell is the mean over seeds within the group, with the paired
    test against `baseline` and the relative change computed on the group's users alone (as in
    summarize_runs): whether a variant helps the tail more than it helps everyone."""
    if not runs:
        return "_No runs._\n"
    cells: dict[str, dict] = {}
    for group, mask in masks.items():
        if not mask.any():  # nobody in the group: every cell "n/a"
            cells[group] = {}
            continue
        in_group = [
            RunResult(run.backbone, run.variant, run.seed, {metric: run.per_user[metric][mask]})
            for run in runs
        ]
        rows = summarize_runs(in_group, (metric,), baseline, alpha)
        cells[group] = {(row["backbone"], row["variant"]): row[metric] for row in rows}
    header = [f"{group} ({int(np.sum(mask)):,} users)" for group, mask in masks.items()]
    lines = [
        "| Backbone | Variant | " + " | ".join(header) + " |",
        "|" + "|".join([" --- "] * 2 + [" ---: "] * len(masks)) + "|",
    ]
    for key in table_order(list(dict.fromkeys((run.backbone, run.variant) for run in runs))):
        values = [
            _format_cell(cells[group][key], spread=False) if cells[group] else "n/a"
            for group in masks
        ]
        lines.append(f"| {_escape(key[0])} | {_escape(key[1])} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def results_report(
    dataset: str,
    config: RecommenderConfig,
    test_ranks: dict[tuple[str, str, int], dict[str, np.ndarray]],
    popularity: dict[str, np.ndarray],
    groups: dict[str, np.ndarray],
) -> str:
    """reports/recommenders.md: the results table of both protocols, each with the popularity
    baseline, then test NDCG@10 by user group.

    `test_ranks`: {(backbone, variant, seed): {"full": ranks, "sampled": ranks}} of the runs that
    finished, every array over the same test users in the same order; `popularity`: the baseline's
    test ranks by protocol; `groups`: {group: boolean mask over those users}."""
    if not test_ranks:
        raise ValueError("no recommender run has written results yet")
    titles = {
        "full": "Test, full ranking (all items, the user's history masked)",
        "sampled": f"Test, sampled ({config.evaluation.negatives} fixed negatives per user)",
    }
    sections = [f"# Recommenders on {dataset}", ""]
    for backbone, overrides in config.per_backbone.items():
        settings = overrides.settings()
        if backbone in config.backbones and settings:
            sections.append(
                f"{backbone} trains with its own settings: "
                + ", ".join(f"{key} = {value}" for key, value in settings.items())
                + "."
            )
    sections += [""] if sections[-1] else []
    for protocol, title in titles.items():
        results = [
            RunResult(*run, rank_metrics(ranks[protocol])) for run, ranks in test_ranks.items()
        ]
        baseline = {m: v.mean() for m, v in rank_metrics(popularity[protocol]).items()}
        sections += [
            render_results_markdown(summarize_runs(results), title=title),
            popularity_line(baseline),
            "",
        ]
    full = [RunResult(*run, rank_metrics(ranks["full"])) for run, ranks in test_ranks.items()]
    sections += [
        "## Test NDCG@10 by user group (full ranking, mean over seeds)",
        "",
        render_group_table(full, groups),
        f"tail: the held-out item is among the least popular items that together hold "
        f"{config.evaluation.tail_share:.0%} of the training interactions; short: the "
        "user's training history is at most the median length. ▲ / ▼ and % as above, on the "
        "group's users alone.",
        "",
    ]
    return "\n".join(sections)
