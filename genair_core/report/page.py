"""The report as one self-contained HTML page: inline CSS and SVG, no script, no external file."""

from __future__ import annotations

import json
from html import escape

from genair_core.report.charts import SPACE_TITLES, item_map_chart, ndcg_chart, training_chart
from genair_core.report.model import (
    ArchetypeExample,
    GroupSection,
    ItemMap,
    Missing,
    Report,
    ResultsSection,
    RunManifest,
    TrainingCurve,
)
from genair_core.report.results import BETTER, GROUPS, RESULT_METRICS, WORSE, seeds_phrase

RUN_FIELDS = (
    "run_id",
    "flow",
    "state",
    "started_at",
    "ended_at",
    "model_id",
    "prompt_version",
    "code_version",
    "config_hash",
    "host",
    "error",
)
SECTIONS = (
    ("results", "Results"),
    ("ndcg", "NDCG@10 per backbone × variant"),
    ("training", "Training curves"),
    ("groups", "Results by user group"),
    ("item-map", "Item vectors: raw vs calibrated"),
    ("archetypes", "Example archetypes"),
    ("manifest", "Run manifest"),
)
CSS = """
:root { --ink: #1d2430; --muted: #5b6675; --line: #d9dee5; --soft: #f5f7fa; --accent: #2459a8; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
  sans-serif; color: var(--ink); background: #fff; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 40px 0 10px; padding-bottom: 4px; border-bottom: 2px solid
  var(--line); }
h3 { font-size: 1.08em; margin: 22px 0 6px; }
.meta { color: var(--muted); margin: 0 0 12px; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 12px; background: var(--accent);
  color: #fff; font-weight: 600; font-size: 0.9em; }
.banner { margin: 12px 0 18px; padding: 12px 16px; border-radius: 6px; background: #fde8e8;
  border: 2px solid #c62828; color: #8e1b1b; font-weight: 700; font-size: 1.1em; }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 18px; display: inline-block; }
nav.toc ol { margin: 4px 0; padding-left: 20px; }
nav.toc a { color: var(--accent); text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 6px; font-size: 0.93em; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 10px; text-align: left;
  vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.baseline td { color: var(--muted); font-style: italic; }
.better { color: #1b7a2e; font-weight: 700; }
.worse { color: #b3261e; font-weight: 700; }
.rel { color: var(--muted); font-size: 0.9em; }
.legend, .note { color: var(--muted); font-size: 0.9em; max-width: 900px; }
.missing { margin: 8px 0; padding: 10px 14px; border-left: 4px solid #e0a800;
  background: #fff8e1; border-radius: 4px; }
code { background: var(--soft); padding: 1px 5px; border-radius: 3px; font-size: 0.92em; }
svg.chart { width: 100%; height: auto; display: block; margin: 8px 0; }
.example { border: 1px solid var(--line); border-radius: 6px; padding: 4px 16px 12px;
  margin: 14px 0; }
.example dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0; }
.example dt { color: var(--muted); }
.example dd { margin: 0; }
blockquote { margin: 8px 0; padding: 8px 14px; background: var(--soft); border-left: 3px solid
  var(--accent); white-space: pre-wrap; }
.neighbours { display: flex; gap: 28px; flex-wrap: wrap; }
.neighbours ol { margin: 4px 0; padding-left: 22px; }
details pre { background: var(--soft); padding: 10px; overflow-x: auto; font-size: 0.85em; }
.hash { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.88em; }
"""


def render_report_html(report: Report) -> str:
    """The whole page. Every section renders its data, or says what is missing and which command
    writes it."""
    sections = [
        _section("results", _results(report.results)),
        _section("ndcg", _ndcg(report.results)),
        _section("training", _training(report.curves)),
        _section("groups", _groups(report.groups)),
        _section("item-map", _item_map(report.item_map)),
        _section("archetypes", _archetypes(report.archetypes)),
        _section("manifest", _manifest(report.manifest, report.profile)),
    ]
    title = f"genair report: {report.dataset}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            "<main>",
            _header(report, title),
            _toc(),
            *sections,
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )


def _header(report: Report, title: str) -> str:
    run = report.manifest.run or {}
    profile = report.profile or "not recorded"
    parts = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">profile <span class="badge" id="profile">{escape(profile)}</span>'
        f" · run <code>{escape(str(run.get('run_id', 'none recorded')))}</code>"
        f" · written {escape(report.generated_at)}</p>",
    ]
    if report.smoke_run:
        parts.append(
            f'<div class="banner" id="smoke-banner" role="alert">Smoke run — not a result. '
            f"Profile <code>{escape(report.profile or '')}</code> trims the data, the "
            "generation and the training to check that the pipeline runs end to end; its numbers "
            "say nothing about the method.</div>"
        )
    return "\n".join(parts)


def _toc() -> str:
    items = "".join(f'<li><a href="#{key}">{escape(name)}</a></li>' for key, name in SECTIONS)
    return f'<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>{items}</ol></nav>'


def _section(key: str, body: str) -> str:
    name = dict(SECTIONS)[key]
    return f'<section id="{key}">\n<h2>{escape(name)}</h2>\n{body}\n</section>'


def _missing(missing: Missing) -> str:
    return (
        f'<div class="missing"><strong>Not available yet:</strong> {escape(missing.what)}. '
        f"<code>{escape(missing.command)}</code> writes it.</div>"
    )


def _results(results: ResultsSection | Missing) -> str:
    if isinstance(results, Missing):
        return _missing(results)
    titles = {
        "full": "Test, full ranking (all items, the user's history masked)",
        "sampled": f"Test, sampled ({results.negatives} fixed negatives per user)",
    }
    parts = []
    if results.finished < results.planned:
        parts.append(
            f'<p class="note">{results.finished} of {results.planned} planned runs have '
            "finished; the Seeds column says how many each row holds.</p>"
        )
    for protocol, title in titles.items():
        rows = results.rows[protocol]
        parts.append(f"<h3>{escape(title)}</h3>")
        parts.append(_results_table(rows, results.popularity.get(protocol), protocol))
    parts.append(_legend(results.rows["full"]))
    return "\n".join(parts)


def _results_table(rows: list[dict], popularity: dict[str, float] | None, protocol: str) -> str:
    head = "".join(f'<th class="num">{m.upper()}</th>' for m in RESULT_METRICS)
    lines = [
        f'<table class="results" id="results-{protocol}">',
        f'<thead><tr><th>Backbone</th><th>Variant</th><th class="num">Seeds</th>{head}</tr>'
        "</thead><tbody>",
    ]
    for row in rows:
        cells = "".join(_result_cell(row[m], row["seeds"]) for m in RESULT_METRICS)
        lines.append(
            f"<tr><td>{escape(row['backbone'])}</td><td>{escape(row['variant'])}</td>"
            f'<td class="num">{row["seeds"]}</td>{cells}</tr>'
        )
    if popularity:
        cells = "".join(
            f'<td class="num">{popularity[m]:.4f}</td>' if m in popularity else "<td></td>"
            for m in RESULT_METRICS
        )
        lines.append(
            f'<tr class="baseline"><td colspan="3">popularity (training counts)</td>{cells}</tr>'
        )
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _result_cell(cell: dict, seeds: int) -> str:
    if cell["mean"] != cell["mean"]:  # NaN
        return '<td class="num">n/a</td>'
    text = f"{cell['mean']:.4f}"
    if seeds > 1:
        text += f" ± {cell['std']:.4f}"
    if cell["mark"]:
        kind = "better" if cell["mark"] == BETTER else "worse"
        text += f' <span class="{kind}">{escape(cell["mark"])}</span>'
    if cell["rel_pct"] is not None:
        text += f' <span class="rel">{cell["rel_pct"]:+.1f}%</span>'
    title = f' title="p = {cell["p"]:.3g}"' if cell["p"] is not None else ""
    return f'<td class="num"{title}>{text}</td>'


def _legend(rows: list[dict]) -> str:
    first = rows[0]
    return (
        f'<p class="legend">Mean ± std over {seeds_phrase(rows)} of each run\'s mean over '
        f"{first['users']:,} test users (no ± for one seed). {BETTER} / {WORSE}: significantly "
        f"better / worse than <code>{escape(first['baseline'])}</code> of the same backbone "
        f"(two-sided Wilcoxon signed-rank test on per-user values averaged over the shared "
        f"seeds, p &lt; {first['alpha']:g}; hover a cell for p); % is the change relative to "
        f"the <code>{escape(first['baseline'])}</code> mean.</p>"
    )


def _ndcg(results: ResultsSection | Missing) -> str:
    if isinstance(results, Missing):
        return _missing(results)
    popularity = results.popularity.get("full", {}).get("ndcg@10")
    return ndcg_chart(results.rows["full"], popularity) + (
        '<p class="note">Error bars: ± one standard deviation over seeds. Dashed line: the '
        "popularity baseline.</p>"
        if popularity is not None
        else '<p class="note">Error bars: ± one standard deviation over seeds.</p>'
    )


def _training(curves: list[TrainingCurve] | Missing) -> str:
    if isinstance(curves, Missing):
        return _missing(curves)
    return training_chart(curves) + (
        f'<p class="note">{len(curves)} runs. Each line is the mean over a variant\'s seeds at '
        "each epoch, the band their range; L_rec is the recommendation loss, L_cal the "
        "behavioural calibration loss (0 for variants that do not calibrate).</p>"
    )


def _groups(groups: GroupSection | Missing) -> str:
    if isinstance(groups, Missing):
        return _missing(groups)
    shown = [g for g in GROUPS if g in groups.users]
    top = "".join(
        f'<th colspan="{len(RESULT_METRICS)}" class="num">'
        f"{escape(g)} ({groups.users[g]:,} users)</th>"
        for g in shown
    )
    sub = "".join(f'<th class="num">{m.upper()}</th>' for _ in shown for m in RESULT_METRICS)
    lines = [
        '<table id="groups-table">',
        f'<thead><tr><th rowspan="2">Backbone</th><th rowspan="2">Variant</th>{top}</tr>'
        f"<tr>{sub}</tr></thead><tbody>",
    ]
    for (backbone, variant), cell in groups.cells.items():
        values = "".join(
            f'<td class="num">{cell[g][m]:.4f}</td>'
            if m in cell.get(g, {})
            else '<td class="num">n/a</td>'
            for g in shown
            for m in RESULT_METRICS
        )
        lines.append(f"<tr><td>{escape(backbone)}</td><td>{escape(variant)}</td>{values}</tr>")
    lines.append("</tbody></table>")
    lines.append(
        f'<p class="legend">Test, full ranking, mean over seeds. tail: the held-out item is '
        f"among the least popular items that together hold {groups.tail_share:.0%} of the "
        "training interactions (head: the rest); short: the user's training history is at "
        "most the median length (long: longer).</p>"
    )
    return "\n".join(lines)


def _item_map(item_map: ItemMap | Missing) -> str:
    if isinstance(item_map, Missing):
        return _missing(item_map)
    n = len(item_map.labels)
    sample = (
        f"{n:,} items"
        if n == item_map.total_items
        else f"a sample of {n:,} of {item_map.total_items:,} items"
    )
    coloured = f", coloured by {item_map.label_kind}" if item_map.label_kind else ""
    notes = "".join(f'<p class="note">{escape(note)}</p>' for note in item_map.notes)
    return (
        item_map_chart(item_map)
        + f'<p class="note">{sample}{escape(coloured)}, each space projected on its own first two '
        "principal components: how the calibration reshapes the space, not a common axis.</p>"
        + notes
    )


def _archetypes(examples: list[ArchetypeExample] | Missing) -> str:
    if isinstance(examples, Missing):
        return _missing(examples)
    parts = [
        '<p class="note">The most-interacted items, their archetype and their nearest '
        "neighbours (cosine) in each FAISS index, as <code>genair similar</code> finds them.</p>"
    ]
    for example in examples:
        meta = "".join(
            f"<dt>{escape(key)}</dt><dd>{escape(value)}</dd>"
            for key, value in {
                "item_id": example.item_id,
                "interactions": f"{example.interactions:,}",
                **example.metadata,
            }.items()
        )
        lists = []
        for space, hits in example.neighbours.items():
            if isinstance(hits, str):
                body = f'<div class="missing">{escape(hits)}</div>'
            else:
                body = "<ol>" + "".join(
                    f"<li>{escape(hit.title or hit.item_id)} "
                    f'<span class="rel">({hit.score:.3f})</span></li>'
                    for hit in hits
                )
                body += "</ol>"
            lists.append(
                f"<div><strong>{escape(SPACE_TITLES.get(space, space))}</strong>{body}</div>"
            )
        parts.append(
            f'<article class="example"><h3>{escape(example.title or example.item_id)}</h3>'
            f"<dl>{meta}</dl><blockquote>{escape(example.archetype)}</blockquote>"
            f'<div class="neighbours">{"".join(lists)}</div></article>'
        )
    return "\n".join(parts)


def _manifest(manifest: RunManifest, profile: str | None) -> str:
    parts = []
    run = manifest.run
    if run is None:
        parts.append(_missing(Missing("no run is recorded in this storage root", "genair run")))
    else:
        rows = "".join(
            f"<tr><th>{escape(name)}</th><td>{escape(_value(run.get(name)))}</td></tr>"
            for name in RUN_FIELDS
            if run.get(name) is not None
        )
        rows += f"<tr><th>profile</th><td>{escape(profile or 'not recorded')}</td></tr>"
        rows += (
            "<tr><th>parameters</th>"
            f"<td><code>{escape(json.dumps(run.get('parameters', {}), sort_keys=True))}</code>"
            "</td></tr>"
        )
        parts.append(f'<table id="run-record">{rows}</table>')
        parts.append(f'<p class="note">{manifest.runs_total} runs recorded in this root.</p>')
    if manifest.tables:
        lines = [
            '<table id="tables"><thead><tr><th>table</th><th class="num">rows</th>'
            "<th>sha256</th><th>written by step</th><th>at</th></tr></thead><tbody>"
        ]
        for table in manifest.tables:
            parts_note = f" ({table['parts']} parts)" if table.get("parts") else ""
            lines.append(
                f"<tr><td>{escape(str(table['table']))}{parts_note}</td>"
                f'<td class="num">{int(table["rows"]):,}</td>'  # type: ignore[call-overload]
                f'<td class="hash">{escape(str(table["sha256"])[:16])}</td>'
                f"<td>{escape(_value(table.get('step')))}</td>"
                f"<td>{escape(_value(table.get('written_at')))}</td></tr>"
            )
        lines.append("</tbody></table>")
        parts.append("\n".join(lines))
    else:
        parts.append(_missing(Missing("no table has been written yet", "genair run")))
    settings = json.dumps(manifest.settings, indent=2, sort_keys=True, default=str)
    parts.append(f"<details><summary>Settings</summary><pre>{escape(settings)}</pre></details>")
    return "\n".join(parts)


def _value(value: object) -> str:
    return "–" if value is None else str(value)
