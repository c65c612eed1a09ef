"""Runs (backbone x variant x seed) aggregated into the results table an ML engineer reads.

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


def summarize(
    runs: list[RunResult],
    metrics: tuple[str, ...] = ("hr@10", "ndcg@10"),
    baseline: str = "id",
    alpha: float = 0.05,
) -> list[dict]:
    """One row per (backbone, variant), in table order (see variant_sort_key).

    A row is {"backbone", "variant", "seeds": number of seeds, "users", "baseline", "alpha",
    metric: {"mean", "std", "p", "rel_pct", "mark"}} for each metric: mean and std (ddof=1, 0 for
    one seed) over seeds of the run means; for a variant other than `baseline`, p is the paired
    test against the baseline of the same backbone on per-user values averaged over the seeds
    both have, rel_pct is 100 * (mean / baseline mean - 1), and mark is BETTER or WORSE when
    p < alpha (else ""). p and rel_pct are None for the baseline itself, when the backbone has no
    baseline run or no seed in common with it (p), or when the baseline mean is 0 (rel_pct).
    """
    grouped = _group(runs, metrics)
    n_users = next(iter(runs[0].per_user.values())).size if runs else 0
    rows = []
    for (backbone, variant), by_seed in grouped.items():
        base = grouped.get((backbone, baseline)) if variant != baseline else None
        row: dict = {
            "backbone": backbone,
            "variant": variant,
            "seeds": len(by_seed),
            "users": n_users,
            "baseline": baseline,
            "alpha": alpha,
        }
        for metric in metrics:
            row[metric] = _cell(by_seed, base, metric, alpha)
        rows.append(row)
    return _ordered(rows)


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


def _cell(
    by_seed: dict[int, dict[str, np.ndarray]],
    base: dict[int, dict[str, np.ndarray]] | None,
    metric: str,
    alpha: float,
) -> dict:
    run_means = np.array([values[metric].mean() for values in by_seed.values()])
    mean = float(run_means.mean())
    std = float(run_means.std(ddof=1)) if run_means.size >= 2 else 0.0
    cell = {"mean": mean, "std": std, "p": None, "rel_pct": None, "mark": ""}
    if base is None:
        return cell
    base_mean = float(np.mean([values[metric].mean() for values in base.values()]))
    if base_mean != 0.0:
        cell["rel_pct"] = 100.0 * (mean / base_mean - 1.0)
    shared = sorted(by_seed.keys() & base.keys())
    if not shared:
        return cell
    ours = np.mean([by_seed[s][metric] for s in shared], axis=0)
    theirs = np.mean([base[s][metric] for s in shared], axis=0)
    p = paired_test(ours, theirs)
    cell["p"] = p
    shift = ours.mean() - theirs.mean()
    if p < alpha and shift != 0.0:
        cell["mark"] = BETTER if shift > 0.0 else WORSE
    return cell


def variant_sort_key(variant: str) -> tuple[int, str]:
    """VARIANT_ORDER first, in that order; other variants alphabetically."""
    if variant in VARIANT_ORDER:
        return (VARIANT_ORDER.index(variant), "")
    return (len(VARIANT_ORDER), variant)


def _ordered(rows: list[dict]) -> list[dict]:
    """Backbones in order of first appearance, variants by variant_sort_key within each."""
    backbones = list(dict.fromkeys(row["backbone"] for row in rows))
    return sorted(
        rows, key=lambda r: (backbones.index(r["backbone"]), variant_sort_key(r["variant"]))
    )


def render_results_markdown(
    rows: list[dict],
    metrics: tuple[str, ...] = ("hr@10", "ndcg@10"),
    title: str | None = None,
) -> str:
    """A Markdown table of summarize() rows, one line per backbone x variant, and its legend.

    A cell reads "0.1234 ± 0.0056 ▲ +3.2%": mean ± std over seeds (no ± for a single seed), the
    mark when the paired test against the baseline is significant, and the change relative to the
    baseline mean.
    """
    lines = [f"## {title}", ""] if title else []
    if not rows:
        return "\n".join([*lines, "_No runs._", ""])
    header = ["Backbone", "Variant", "Seeds", *(m.upper() for m in metrics)]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([" --- "] * 3 + [" ---: "] * len(metrics)) + "|")
    for row in _ordered(rows):
        cells = [_escape(row["backbone"]), _escape(row["variant"]), str(row["seeds"])]
        cells += [_format_cell(row[m], spread=row["seeds"] > 1) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _legend(rows), ""]
    return "\n".join(lines)


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
    summarize): whether a variant helps the tail more than it helps everyone."""
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
        rows = summarize(in_group, (metric,), baseline, alpha)
        cells[group] = {(row["backbone"], row["variant"]): row[metric] for row in rows}
    header = [f"{group} ({int(np.sum(mask)):,} users)" for group, mask in masks.items()]
    lines = [
        "| Backbone | Variant | " + " | ".join(header) + " |",
        "|" + "|".join([" --- "] * 2 + [" ---: "] * len(masks)) + "|",
    ]
    keyed = [{"backbone": run.backbone, "variant": run.variant} for run in runs]
    for row in _ordered(list({(r["backbone"], r["variant"]): r for r in keyed}.values())):
        key = (row["backbone"], row["variant"])
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
        baseline = rank_metrics(popularity[protocol])
        sections += [
            render_results_markdown(summarize(results), title=title),
            f"Popularity (training counts): HR@10 {baseline['hr@10'].mean():.4f}, "
            f"NDCG@10 {baseline['ndcg@10'].mean():.4f}.",
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
