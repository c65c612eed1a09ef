"""The HTML report (genair_core.report, storage.report, tasks.report), opened in a real headless
Chromium: it renders, logs no console error, fetches nothing, and holds its charts and tables;
a partial run's report says what is missing and which command writes it.

The browser is driven over the DevTools protocol on a pipe (--remote-debugging-pipe), with no
driver library: every console message, uncaught exception, log entry and network request the
page causes is an event the test reads. scripts/ensure-chromium installs Chromium where it is
missing; without it the browser tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from scripted_pipeline import TitleEngines, scripted_pipeline, write_catalog_dataset

from genair_core.config import EvaluationConfig
from genair_core.report.model import (
    Missing,
    build_report,
    category_labels,
    project_2d,
    results_section,
)
from genair_core.report.page import render_report_html
from storage.report import ReportTables
from tasks.report import write_report
from tasks.settings import Settings, load_settings

CHARTS = ("chart-ndcg", "chart-training", "chart-item-map")
TABLES = ("results-full", "results-sampled", "groups-table", "run-record", "tables")


# -- a headless Chromium on the DevTools protocol -----------------------------------------------


@dataclass
class PageLoad:
    """What a page did while it loaded: the DOM facts asked for, and every problem it logged."""

    dom: dict
    console_errors: list[str] = field(default_factory=list)  # console.error / console.assert
    exceptions: list[str] = field(default_factory=list)  # uncaught JS errors
    log_errors: list[str] = field(default_factory=list)  # the browser's own errors (failed loads)
    requests: list[str] = field(default_factory=list)  # every URL the page requested

    @property
    def errors(self) -> list[str]:
        return [*self.console_errors, *self.exceptions, *self.log_errors]


# Facts about the rendered page, read in the page itself after the load event.
DOM_PROBE = """JSON.stringify({
  title: document.title,
  svgs: [...document.querySelectorAll('svg')].map(s => ({
    id: s.id, title: s.querySelector(':scope > title')?.textContent ?? null,
    width: s.getBoundingClientRect().width, marks: s.querySelectorAll('path, use').length})),
  tables: [...document.querySelectorAll('table')].map(t => ({id: t.id, rows: t.rows.length})),
  sections: [...document.querySelectorAll('section')].map(s => s.id),
  missing: [...document.querySelectorAll('section')].filter(s => s.querySelector('.missing'))
    .map(s => s.id),
  profile: document.getElementById('profile')?.textContent ?? null,
  banner: document.getElementById('smoke-banner')?.innerText ?? null,
  duplicateIds: (() => { const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
    return ids.filter((id, i) => ids.indexOf(id) !== i); })(),
  scripts: document.scripts.length,
  height: document.body.scrollHeight,
})"""


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    """The Chromium binary; the test skips when there is none, and fails under CI (where the
    check must run). Session-scoped, so a missing browser is found before any pipeline runs."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "no chromium on PATH: scripts/ensure-chromium installs it (apt-get, as root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def load_page(binary: str, url: str, timeout: float = 300.0) -> PageLoad:
    """Open `url` in a fresh headless Chromium and record what happens until its load event."""
    with _Browser(binary, timeout) as browser:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Page.navigate", {"url": url}, session=session)
        browser.wait_for("Page.loadEventFired")
        probe = browser.call(
            "Runtime.evaluate", {"expression": DOM_PROBE, "returnByValue": True}, session=session
        )
        page = PageLoad(dom=json.loads(probe["result"]["value"]))
        for event in browser.events:
            params = event.get("params", {})
            method = event.get("method")
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                page.console_errors.append(" ".join(str(a.get("value")) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                page.exceptions.append(
                    details.get("exception", {}).get("description") or details["text"]
                )
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                page.log_errors.append(params["entry"]["text"])
            elif method == "Network.requestWillBeSent":
                page.requests.append(params["request"]["url"])
        return page


class _Browser:
    """Chromium with --remote-debugging-pipe: commands go in on its fd 3, replies and events
    come out of its fd 4, each a JSON message ended by a NUL byte."""

    def __init__(self, binary: str, timeout: float) -> None:
        self.binary, self.timeout = binary, timeout
        self.events: list[dict] = []
        self._buffer = b""
        self._next_id = 0

    def __enter__(self) -> _Browser:
        self._profile = tempfile.TemporaryDirectory(prefix="genair-chromium-")
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        args = [
            "--headless",
            "--no-sandbox",  # tests run as root in containers, where the sandbox cannot start
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile.name}",
            "about:blank",
        ]
        # bash moves the pipe ends onto fds 3 and 4 (no preexec_fn: tests run beside threads).
        script = f'exec "$0" "$@" 3<&{commands_read} 4>&{replies_write}'
        self._process = subprocess.Popen(
            ["bash", "-c", script, self.binary, *args],
            pass_fds=(commands_read, replies_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(replies_write)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call("Browser.close")
            self._process.wait(timeout=10)
        except (OSError, TimeoutError, EOFError, subprocess.TimeoutExpired, RuntimeError):
            self._process.kill()
            self._process.wait()
        finally:
            os.close(self._commands)
            os.close(self._replies)
            self._profile.cleanup()

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        reply = self._read_until(lambda m: m.get("id") == message["id"])
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_for(self, event: str) -> dict:
        return self._read_until(lambda m: m.get("method") == event)

    def _read_until(self, wanted) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            ready, _, _ = select.select([self._replies], [], [], deadline - time.monotonic())
            if not ready:
                raise TimeoutError(f"chromium sent nothing for {self.timeout} s")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed its DevTools pipe")
            self._buffer += chunk


def external_references(html: str) -> list[str]:
    """src/href/url() values in the page that point outside it (anything but #... and data:)."""
    found = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", html)
    return [ref for ref in found if not ref.strip("'\" ").startswith(("#", "data:"))]


# -- the browser check itself ---------------------------------------------------------------------


def test_the_browser_check_sees_console_errors_exceptions_and_requests(chromium_binary, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>broken</title></head><body>"
        '<svg id="chart-x"><title>x</title></svg><table id="t"><tr><td>1</td></tr></table>'
        '<img src="http://192.0.2.1/pixel.png">'
        "<script>console.error('deliberate'); undefinedFunction();</script></body></html>"
    )
    loaded = load_page(chromium_binary, page.as_uri())
    assert loaded.console_errors == ["deliberate"]
    assert len(loaded.exceptions) == 1
    assert "undefinedFunction" in loaded.exceptions[0]
    assert "http://192.0.2.1/pixel.png" in loaded.requests
    assert loaded.dom["svgs"][0]["id"] == "chart-x"
    assert external_references(page.read_text()) == ["http://192.0.2.1/pixel.png"]


# -- a whole scripted run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_config(tmp_path_factory, prefect_harness) -> Path:
    """A scripted pipeline run to the end: SASRec × (id, llm, genair) × 2 seeds, three epochs each,
    on 24 movies whose genre is their category."""
    config = write_catalog_dataset(tmp_path_factory.mktemp("report"))
    text = config.read_text()
    text = text.replace('variants = ["id"]', 'variants = ["id", "llm", "genair"]')
    text = text.replace("seeds = [1]", "seeds = [1, 2]")
    text = text.replace("max_epochs = 1", "max_epochs = 3")
    text += '[dataset.files.item_columns]\ncategories = "genre"\n'
    config.write_text(text)
    scripted_pipeline(str(config), TitleEngines())
    return config


def test_the_report_of_a_whole_run_renders_every_section_in_chromium(
    chromium_binary, pipeline_config
):
    settings = load_settings(pipeline_config)
    started = time.perf_counter()
    path = write_report(settings)
    seconds = time.perf_counter() - started
    assert path == settings.storage.root / "reports" / "report.html"
    html = path.read_text()
    assert external_references(html) == []
    assert "<script" not in html
    assert "<link" not in html

    page = load_page(chromium_binary, path.as_uri())

    assert page.errors == [], page.errors
    assert page.requests == [path.as_uri()]  # the page itself, nothing else
    dom = page.dom
    assert dom["missing"] == [], f"sections without data: {dom['missing']}"
    svgs = {svg["id"]: svg for svg in dom["svgs"]}
    for chart in CHARTS:
        assert chart in svgs, f"{chart} not rendered"
        assert svgs[chart]["title"], f"{chart} has no title"
        assert svgs[chart]["width"] > 200
        assert svgs[chart]["marks"] > 10
    tables = {table["id"]: table["rows"] for table in dom["tables"]}
    for table in TABLES:
        assert table in tables, f"table {table} not rendered"
    assert tables["results-full"] == 1 + 3 + 1  # header, sasrec × 3 variants, popularity
    assert tables["groups-table"] == 2 + 3
    assert dom["duplicateIds"] == []
    assert dom["scripts"] == 0
    assert dom["profile"] == "default"
    assert dom["banner"] is None
    assert "± " in html  # two seeds: mean ± std
    assert "Movie " in html  # the archetype examples and their neighbours' titles
    assert seconds < 60


def test_a_quick_profile_is_labelled_a_smoke_run(chromium_binary, pipeline_config, tmp_path):
    settings = load_settings(pipeline_config).model_copy(
        update={"profile": "quick", "smoke_run": True}
    )
    path = write_report(settings, tmp_path / "quick.html")
    page = load_page(chromium_binary, path.as_uri())
    assert page.errors == []
    assert page.dom["profile"] == "quick"
    assert "Smoke run — not a result" in page.dom["banner"]


def test_a_run_until_pooling_explains_the_sections_it_has_no_data_for(
    chromium_binary, tmp_path, prefect_harness
):
    config = write_catalog_dataset(tmp_path)
    scripted_pipeline(str(config), TitleEngines(), until="pooling")
    path = write_report(load_settings(config))

    page = load_page(chromium_binary, path.as_uri())

    assert page.errors == []
    assert page.dom["missing"] == ["results", "ndcg", "training", "groups", "archetypes"]
    html = path.read_text()
    assert html.count("genair run --from negatives") >= 3
    assert "genair run --from index --until index" in html  # no FAISS index yet
    assert "only the raw space is shown" in html  # no calibrated vectors yet
    assert "chart-item-map" in {svg["id"] for svg in page.dom["svgs"]}


# -- partial inputs, without a browser ------------------------------------------------------------


def test_an_empty_storage_root_gives_a_report_that_says_what_to_run(tmp_path):
    settings = Settings(storage={"root": tmp_path / "data"})
    path = write_report(settings)
    html = path.read_text()
    assert path == tmp_path / "data" / "reports" / "report.html"
    for command in (
        "genair run --from negatives",
        "genair run --from recommenders",
        "genair run --until pooling",
    ):
        assert command in html
    assert "no run is recorded in this storage root" in html
    assert "<svg" not in html


def test_each_section_is_missing_on_its_own():
    vectors = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    sources = ReportTables(
        vectors={"raw": ([f"i{n}" for n in range(6)], vectors)},
        vector_items=6,
        categories={f"i{n}": ["Drama" if n % 2 else "Comedy"] for n in range(6)},
    )
    report = build_report(
        sources,
        dataset="files",
        profile="default",
        runs={"sasrec-id-bce-s1": ("sasrec", "id", 1)},
        evaluation=EvaluationConfig(),
        settings={},
        titles=lambda ids: {},
        generated_at="2026-01-01T00:00:00+00:00",
    )
    assert isinstance(report.results, Missing)
    assert "0 of 1 runs" in report.results.what
    assert isinstance(report.curves, Missing)
    assert isinstance(report.groups, Missing)
    assert isinstance(report.archetypes, Missing)
    assert not isinstance(report.item_map, Missing)
    assert report.item_map.labels == ["Comedy", "Drama"] * 3
    assert report.item_map.label_kind == "category"
    html = render_report_html(report)
    # results (shown twice: table and chart), curves, groups, archetypes, no run, no table
    assert html.count('class="missing"') == 7
    assert 'id="chart-item-map"' in html


def test_labels_come_from_the_first_category_level_where_items_differ():
    amazon = [["Beauty", "Skin Care", "Face"], ["Beauty", "Hair Care"], ["Beauty"], None]
    assert category_labels(amazon) == ["Skin Care", "Hair Care", None, None]
    movies = [["Action", "Drama"], ["Comedy"], None]
    assert category_labels(movies) == ["Action", "Comedy", None]
    assert category_labels([None, None]) == [None, None]


def test_the_projection_is_pca_with_fixed_signs():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 5)) * np.array([5.0, 2.0, 0.5, 0.1, 0.1])
    points, (first, second) = project_2d(x)
    order = rng.permutation(200)
    shuffled, _ = project_2d(x[order])
    assert points.shape == (200, 2)
    assert first > second > 0
    assert first + second <= 1
    assert np.allclose(shuffled, points[order], atol=1e-4)  # each axis's sign is fixed
    assert np.allclose(np.abs(np.corrcoef(points[:, 0], x[:, 0])[0, 1]), 1.0, atol=0.02)


def test_results_come_from_the_ranks_and_stale_runs_are_reported_not_raised():
    runs = {"a-s1": ("sasrec", "id", 1), "a-s2": ("sasrec", "id", 2), "b-s1": ("sasrec", "llm", 1)}
    ranks = {
        "a-s1": {"full": np.array([0, 20]), "sampled": np.array([0, 0])},  # NDCG@10 0.5
        "a-s2": {"full": np.array([0, 0]), "sampled": np.array([0, 0])},  # NDCG@10 1.0
    }
    popularity = [
        {"protocol": "full", "split": "test", "group": "all", "metric": "ndcg@10", "value": 0.1}
    ]
    section = results_section(runs, ranks, popularity, negatives=5)
    (row,) = section.rows["full"]
    assert (row["backbone"], row["variant"], row["seeds"]) == ("sasrec", "id", 2)
    assert row["ndcg@10"]["mean"] == pytest.approx(0.75)
    assert row["ndcg@10"]["std"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert section.popularity == {"full": {"ndcg@10": 0.1}}
    assert (section.finished, section.planned) == (2, 3)

    ranks["b-s1"] = {"full": np.array([0, 1, 2]), "sampled": np.array([0, 1, 2])}
    stale = results_section(runs, ranks, popularity, negatives=5)
    assert isinstance(stale, Missing)
    assert "cannot be compared" in stale.what


@pytest.mark.parametrize("shape", [(300, 6), (6, 40)])  # more items than dimensions, and fewer
def test_the_projection_matches_an_svd(shape):
    x = np.random.default_rng(5).normal(size=shape) * np.linspace(3.0, 0.5, shape[1])
    points, shares = project_2d(x)
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    assert np.allclose(np.abs(points), np.abs(u[:, :2] * s[:2]), atol=1e-4)
    assert np.allclose(shares, s[:2] ** 2 / (s**2).sum())
