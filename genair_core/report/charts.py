"""The report's charts as inline SVG: static, no script, nothing fetched when the page opens.

Figures are built with matplotlib's object API, each on its own Agg canvas (never pyplot, no
process-wide backend switch), so no global figure state outlives a call. Text stays text
(svg.fonttype "none"), which keeps each chart small and lets the page's font render it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from genair_core.report.model import OTHER, ItemMap, TrainingCurve
from genair_core.report.results import VARIANT_ORDER, table_order
from genair_core.tables import VECTOR_SPACES

# One colour per variant in every chart (matplotlib's tab10), other variants after them.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#7f7f7f",
)
OTHER_COLOUR = "#c7c7c7"
SPACE_TITLES = {space: f"{space} ({table})" for space, table in VECTOR_SPACES.items()}


def variant_colours(variants: Sequence[str]) -> dict[str, str]:
    known = [v for v in VARIANT_ORDER if v in variants]
    others = sorted(v for v in set(variants) if v not in VARIANT_ORDER)
    return {v: PALETTE[n % len(PALETTE)] for n, v in enumerate([*known, *others])}


def ndcg_chart(rows: list[dict], popularity: float | None, metric: str = "ndcg@10") -> str:
    """Bars of `metric` per backbone × variant (summarize_runs() rows) with ± std error bars, and
    the popularity baseline as a dashed line."""
    backbones = list(dict.fromkeys(row["backbone"] for row in rows))
    variants = [v for _, v in table_order([(r["backbone"], r["variant"]) for r in rows])]
    variants = list(dict.fromkeys(variants))
    colours = variant_colours(variants)
    width = 0.8 / max(len(variants), 1)
    fig = _figure((max(6.0, 1.6 * len(backbones) + 2.5), 3.6))
    ax = fig.add_subplot()
    cells = {(r["backbone"], r["variant"]): r for r in rows}
    for n, variant in enumerate(variants):
        xs, means, stds = [], [], []
        for b, backbone in enumerate(backbones):
            row = cells.get((backbone, variant))
            if row is None:
                continue
            xs.append(b - 0.4 + width * (n + 0.5))
            means.append(row[metric]["mean"])
            stds.append(row[metric]["std"])
        ax.bar(xs, means, width * 0.92, yerr=stds, capsize=3, color=colours[variant], label=variant)
    if popularity is not None:
        ax.axhline(popularity, color="#555555", linestyle="--", linewidth=1, label="popularity")
    ax.set_xticks(range(len(backbones)), backbones)
    ax.set_ylabel(f"test {metric.upper()} (full ranking)")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    title = f"Test {metric.upper()} per backbone × variant, mean ± std over seeds"
    return figure_svg(fig, "chart-ndcg", title)


def training_chart(curves: list[TrainingCurve]) -> str:
    """Validation NDCG@10, L_rec and L_cal per epoch: a row per backbone, a line per variant
    (mean over its seeds at each epoch, a band from the lowest to the highest seed)."""
    keys = table_order(list(dict.fromkeys((c.backbone, c.variant) for c in curves)))
    backbones = list(dict.fromkeys(b for b, _ in keys))
    colours = variant_colours([v for _, v in keys])
    panels = (("valid_ndcg", "validation NDCG@10"), ("rec_loss", "L_rec"), ("cal_loss", "L_cal"))
    fig = _figure((10.0, 2.5 * len(backbones) + 0.6))
    axes = fig.subplots(len(backbones), len(panels), squeeze=False)
    for row, backbone in enumerate(backbones):
        for col, (attr, label) in enumerate(panels):
            ax = axes[row][col]
            for b, variant in keys:
                if b != backbone:
                    continue
                runs = [c for c in curves if (c.backbone, c.variant) == (b, variant)]
                epochs, low, mean, high = _band(runs, attr)
                ax.plot(
                    epochs,
                    mean,
                    color=colours[variant],
                    linewidth=1.4,
                    marker="o" if len(epochs) < 30 else None,
                    markersize=3,
                    label=variant,
                )
                if len(runs) > 1:
                    ax.fill_between(epochs, low, high, color=colours[variant], alpha=0.15)
            ax.set_title(f"{backbone}: {label}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.spines[["top", "right"]].set_visible(False)
            ax.tick_params(labelsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if row == len(backbones) - 1:
                ax.set_xlabel("epoch", fontsize=8)
        axes[row][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    return figure_svg(fig, "chart-training", "Validation NDCG@10 and loss terms per epoch")


def _band(
    runs: list[TrainingCurve], attr: str
) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Epochs any of the runs reached, and the min, mean and max over the runs that did."""
    at: dict[int, list[float]] = {}
    for run in runs:
        for epoch, value in zip(run.epochs, getattr(run, attr), strict=True):
            at.setdefault(epoch, []).append(value)
    epochs = sorted(at)
    values = [np.array(at[e]) for e in epochs]
    return (
        epochs,
        np.array([v.min() for v in values]),
        np.array([v.mean() for v in values]),
        np.array([v.max() for v in values]),
    )


def item_map_chart(item_map: ItemMap) -> str:
    """A scatter of each space's 2-D projection side by side, one colour per label."""
    spaces = list(item_map.points)
    labels = np.array(item_map.labels, dtype=object)
    named = sorted({label for label in item_map.labels if label != OTHER})
    named.sort(key=lambda label: -int((labels == label).sum()))
    colours = {label: PALETTE[n % len(PALETTE)] for n, label in enumerate(named)}
    colours[OTHER] = OTHER_COLOUR
    fig = _figure((5.0 * len(spaces) + 1.6, 4.8))
    axes = fig.subplots(1, len(spaces), squeeze=False)[0]
    size = float(np.clip(3000 / max(len(labels), 1), 7, 30))  # small catalogs: larger dots
    order = [OTHER, *reversed(named)]  # "other" underneath, the largest groups on top
    for ax, space in zip(axes, spaces, strict=True):
        points = item_map.points[space]
        for label in order:
            mask = labels == label
            if mask.any():
                ax.scatter(
                    points[mask, 0],
                    points[mask, 1],
                    s=size,
                    color=colours[label],
                    label=label if item_map.label_kind else None,
                    linewidths=0,
                    alpha=0.8,
                )
        share = item_map.explained[space]
        ax.set_title(SPACE_TITLES.get(space, space), fontsize=10)
        ax.set_xlabel(f"PC1 ({share[0]:.0%} of variance)", fontsize=8)
        ax.set_ylabel(f"PC2 ({share[1]:.0%} of variance)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    if item_map.label_kind:
        handles, names = axes[0].get_legend_handles_labels()
        by_name = dict(zip(names, handles, strict=True))
        shown = [name for name in [*named, OTHER] if name in by_name]
        fig.legend(
            [by_name[n] for n in shown],
            shown,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
            fontsize=8,
            title=item_map.label_kind,
            markerscale=2,
        )
    fig.tight_layout()
    return figure_svg(fig, "chart-item-map", "Item vectors, raw and calibrated (PCA to 2-D)")


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)  # the Agg canvas, explicitly: layout is measured with its renderer
    return fig


def figure_svg(fig: Figure, chart_id: str, title: str) -> str:
    """`fig` as an <svg> element to inline into HTML: id `chart_id`, a <title>, sized by the page
    (viewBox kept), no XML prologue or metadata, every internal id prefixed with `chart_id` so
    that several charts on one page never share one."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": chart_id}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.DOTALL)
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{chart_id}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{chart_id}-\1)", svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{chart_id}-\1"', svg)
    width_pt = float(re.search(r'\swidth="([0-9.]+)pt"', svg).group(1))  # type: ignore[union-attr]
    svg = re.sub(r'\s(width|height)="[^"]*pt"', "", svg, count=2)
    head = (
        f'<svg id="{chart_id}" class="chart" role="img" aria-labelledby="{chart_id}-title"'
        f' style="max-width: {width_pt * 4 / 3:.0f}px"'  # never drawn larger than made (pt -> px)
    )
    svg = svg.replace("<svg", head, 1)
    end = svg.index(">") + 1
    return f'{svg[:end]}\n<title id="{chart_id}-title">{_text(title)}</title>{svg[end:]}'


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attr(value: str) -> str:
    return _text(value).replace('"', "&quot;")
