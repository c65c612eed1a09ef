"""Progress events (genair_core.progress) from the trainer, the calibration job and the archetype
stage, and the terminal's view of them (flows/progress_view.py)."""

from __future__ import annotations

import io
import logging
import threading

import pytest
from test_calibration import CFG, HASHES, _catalog
from test_training import CONFIG, SEED, data, new_model  # noqa: F401  (data: a fixture)

from flows.progress_view import ProgressView, StepLogHandler
from genair_core import progress
from genair_core.item_space.calibration import calibrate, calibration_inputs
from genair_core.progress import Event
from genair_core.recommenders.training import FitSettings, fit
from storage.checkpoints import RunCheckpoints


class Recorder:
    """A listener that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, stage: str) -> list[Event]:
        return [e for e in self.events if e.stage == stage]

    def done(self, stage: str) -> float:
        return sum(e.amount for e in self.of(stage) if e.kind == "advance")


# -- the channel ----------------------------------------------------------------------------------


def test_nobody_listening_costs_nothing_and_a_listener_sees_every_event_in_order():
    progress.begin("x", total=3)  # no listener: nothing happens, nothing fails
    assert not progress.listening_now()
    seen = Recorder()
    with progress.listening(seen):
        progress.begin("x", total=3, unit="items")
        progress.advance("x", 2, detail="two")
        progress.note("x", "busy")
        progress.end("x")
    progress.advance("x")  # after the block: not delivered
    assert [(e.kind, e.amount, e.detail) for e in seen.events] == [
        ("begin", 0, ""),
        ("advance", 2, "two"),
        ("note", 0, "busy"),
        ("end", 0, ""),
    ]
    assert seen.events[0].total == 3


def test_a_failing_listener_is_dropped_and_the_work_goes_on(caplog):
    seen = Recorder()

    def broken(event: Event) -> None:
        raise RuntimeError("display gone")

    with progress.listening(broken), progress.listening(seen):
        progress.advance("x")
        progress.advance("x")
    assert len(seen.events) == 2
    assert "progress listener" in caplog.text


def test_events_from_threads_all_arrive():
    seen = Recorder()
    with progress.listening(seen):
        threads = [
            threading.Thread(target=lambda: [progress.advance("x") for _ in range(200)])
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert seen.done("x") == 800


def vllm_like_run(make_bar, finished: list[int]) -> None:
    """What vLLM 0.32's LLM.generate does with a `use_tqdm` callable (entrypoints/common/
    offline.py): a bar over the prompts while rendering, then one with total=requests that is
    updated as each request finishes, its postfix set from format_dict["elapsed"]."""
    assert list(make_bar(["p"] * len(finished), desc="Rendering prompts")) == ["p"] * len(finished)
    bar = make_bar(total=len(finished), desc="Processed prompts", dynamic_ncols=True, postfix="")
    for n in finished:
        bar.postfix = f"est. speed input: {10 / bar.format_dict['elapsed']:.2f} toks/s"
        bar.update(n)
        if bar.n == len(finished):
            bar.refresh()
    bar.close()


def test_engine_progress_reports_requests_as_they_finish_and_the_rest_at_the_end():
    assert progress.engine_progress() is False  # nobody listens: vLLM shows no bar at all
    seen = Recorder()
    with progress.listening(seen):
        assert progress.engine_progress() is False  # no counting block in this thread
        with progress.counting("archetypes", 4):
            vllm_like_run(progress.engine_progress(), [1, 1, 1])
        with progress.counting("archetypes", 2):  # an engine that reports nothing
            pass
    amounts = [e.amount for e in seen.of("archetypes")]
    assert amounts == [1, 1, 1, 1, 2]
    assert seen.done("archetypes") == 6


def test_a_failed_block_takes_back_what_it_reported():
    seen = Recorder()

    def failing_batch() -> None:
        with progress.counting("archetypes", 4):
            progress.engine_progress()(total=4).update(3)
            raise ConnectionError("engine hiccup")

    with progress.listening(seen), pytest.raises(ConnectionError):
        failing_batch()
    assert [e.amount for e in seen.events] == [3, -3]


# -- producers ------------------------------------------------------------------------------------


def test_training_reports_every_epoch_with_its_validation_score(data, tmp_path):  # noqa: F811
    seen = Recorder()
    with progress.listening(seen):
        state = fit(
            new_model(),
            data,
            FitSettings(CONFIG, SEED, label="sasrec-id-ce-s7"),
            RunCheckpoints(tmp_path / "ckpt"),
        )
    events = seen.of("recommenders/sasrec-id-ce-s7")
    assert [e.kind for e in events] == ["begin"] + ["advance"] * CONFIG.max_epochs + ["end"]
    assert events[0].total == CONFIG.max_epochs
    assert events[0].unit == "epochs"
    last = events[-2].detail
    assert f"epoch {CONFIG.max_epochs}: valid NDCG@10 " in last
    assert f"{state.history[-1]['valid_ndcg@10']:.4f}" in last


def test_a_resumed_run_begins_with_the_epochs_it_has(data, tmp_path):  # noqa: F811
    checkpoints = RunCheckpoints(tmp_path / "ckpt")
    two_epochs = FitSettings(CONFIG.model_copy(update={"max_epochs": 2}), SEED)
    fit(new_model(), data, two_epochs, checkpoints)
    seen = Recorder()
    with progress.listening(seen):
        fit(new_model(), data, FitSettings(CONFIG, SEED, label="r"), checkpoints)
    begin, *advances, end = seen.of("recommenders/r")
    assert (begin.completed, begin.total) == (2, CONFIG.max_epochs)
    assert len(advances) == CONFIG.max_epochs - 2
    assert end.kind == "end"


def test_calibration_reports_its_epochs():
    seen = Recorder()
    with progress.listening(seen):
        calibrate(calibration_inputs(*_catalog()), CFG, stored=None, inputs=HASHES)
    events = seen.of("calibrate")
    assert events[0].kind == "begin"
    assert events[0].total == CFG.epochs
    assert seen.done("calibrate") == CFG.epochs
    assert events[-1].kind == "end"
    assert "loss" in events[-2].detail


@pytest.mark.usefixtures("prefect_harness")
def test_a_pipeline_run_reports_archetypes_calibration_and_recommender_runs(tmp_path):
    from scripted_pipeline import (
        TitleEngine,
        TitleEngines,
        scripted_pipeline,
        write_catalog_dataset,
    )

    class ReportingEngine(TitleEngine):
        """Reports its requests one by one, as vLLM does with engine_progress()."""

        def generate(self, prompts):
            bar_factory = progress.engine_progress()
            if bar_factory:
                vllm_like_run(bar_factory, [1] * len(prompts))
            return super().generate(prompts)

    class ReportingEngines(TitleEngines):
        def __call__(self, *args, **kwargs):
            return ReportingEngine(self)

    config = write_catalog_dataset(tmp_path)  # 24 items in batches of 4; one run of one epoch
    seen = Recorder()
    with progress.listening(seen):
        scripted_pipeline(str(config), ReportingEngines(), until="recommenders")

    archetypes = seen.of("archetypes")
    assert archetypes[0].kind == "begin"
    assert (archetypes[0].total, archetypes[0].unit) == (24, "items")
    advances = [e for e in archetypes if e.kind == "advance"]
    assert sum(e.amount for e in advances) == 24
    assert [e.amount for e in advances].count(1) == 24  # every request, as it finished
    assert any(e.kind == "note" for e in archetypes)
    assert archetypes[-1].kind == "end"

    assert seen.done("calibrate") == 2  # its epochs

    runs = seen.of("recommenders")
    assert [e.kind for e in runs] == ["begin", "note", "advance", "end"]
    assert (runs[0].total, runs[0].unit) == (1, "runs")
    assert "trained: test NDCG@10 " in runs[2].detail
    (part,) = {e.stage for e in seen.events if e.stage.startswith("recommenders/")}
    assert [e.kind for e in seen.of(part)] == ["begin", "advance", "end"]


# -- the view -------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_plain_view_writes_a_line_per_interval_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    view = ProgressView(out, live=False, interval_s=10, clock=clock)
    with view, progress.listening(view):
        progress.begin("pooling-only", total=5)  # planned, never started: never shown
        progress.begin("archetypes", total=100, unit="items")
        clock.now += 30
        progress.note("archetypes", "batch of 64 in the engine")
        for _ in range(10):
            clock.now += 2
            progress.advance("archetypes", 5)
        clock.now += 10
        progress.advance("archetypes", 50, detail="last batch")
        progress.end("archetypes")
    lines = out.getvalue().splitlines()
    assert lines[0] == "archetypes: 0/100 items (0%); batch of 64 in the engine"
    # One line per 10 s of the 20 s of advances, the last advance, then the end.
    assert lines[1:3] == [
        "archetypes: 25/100 items (25%), 1.6 s/item, 2 min 00 s left; batch of 64 in the engine",
        "archetypes: 50/100 items (50%), 1.00 items/s, 50 s left; batch of 64 in the engine",
    ]
    assert lines[-1] == "archetypes: done: 100/100 items in 1 min 00 s (1.67 items/s)"
    assert not any("pooling-only" in line for line in lines)


def test_the_rate_and_time_left_follow_the_last_minute_not_the_start_up():
    out, clock = io.StringIO(), Clock()
    view = ProgressView(out, live=False, interval_s=1000, clock=clock)
    with view, progress.listening(view):
        progress.begin("archetypes", total=1000, unit="items")
        clock.now += 100  # the engine starts: nothing done
        for _ in range(60):  # then 2 items/s for 2 minutes
            clock.now += 2
            progress.advance("archetypes", 4)
        stage = view.stages["archetypes"]
        assert stage.rate(clock.now) == pytest.approx(2.0)  # since the begin: 240/220 = 1.09
        assert stage.eta_s(clock.now) == pytest.approx(380)
        progress.end("archetypes")
    assert out.getvalue().splitlines()[-1] == (
        "archetypes: done: 240/1,000 items in 3 min 40 s (1.09 items/s)"
    )


def _runs_ending_minutes_apart(clock: Clock) -> None:
    """Two workers: 8 of 45 runs end in pairs 20 s apart, a pair every 5 minutes."""
    progress.begin("recommenders", total=45, unit="runs")
    start = clock.now
    for pair in range(1, 5):
        for at in (pair * 300 - 20, pair * 300):
            clock.now = start + at
            progress.advance("recommenders")


def test_the_rate_of_runs_ending_minutes_apart_holds_between_them_then_slows_when_one_is_late():
    out, clock = io.StringIO(), Clock()
    view = ProgressView(out, live=False, interval_s=1000, clock=clock)
    with view, progress.listening(view):
        _runs_ending_minutes_apart(clock)
        stage = view.stages["recommenders"]
        # The last 4 runs ended over the 600 s after the 4th: 150 s a run, 37 runs left.
        assert stage.rate(clock.now) == pytest.approx(1 / 150)
        assert stage.eta_s(clock.now) == pytest.approx(37 * 150)
        clock.now += 100  # the next run is under way: the rate holds, the time left counts down
        assert stage.rate(clock.now) == pytest.approx(1 / 150)
        assert stage.eta_s(clock.now) == pytest.approx(37 * 150 - 100)
        clock.now += 50  # the next run is due ...
        at_due = stage.eta_s(clock.now)
        assert at_due == pytest.approx(36 * 150)
        clock.now += 1e-6  # ... and from now on counts as ending now: no jump
        assert stage.eta_s(clock.now) == pytest.approx(at_due)
        clock.now += 850  # 1,000 s since the last run: (4 + 1) runs in 1,600 s
        assert stage.rate(clock.now) == pytest.approx(5 / 1600)
        assert stage.eta_s(clock.now) == pytest.approx(36 * 1600 / 5)


def test_the_live_view_draws_a_rate_minutes_after_the_last_run():
    out, clock = io.StringIO(), Clock()
    view = ProgressView(out, live=True, clock=clock)
    with view, progress.listening(view):
        _runs_ending_minutes_apart(clock)
        clock.now += 120  # once raised ZeroDivisionError: no run in the last minute, rate 0
        view._bars.refresh()
    assert "150 s/run" in out.getvalue()


def test_no_rate_or_time_left_before_a_share_of_the_work_is_done():
    out, clock = io.StringIO(), Clock()
    view = ProgressView(out, live=False, interval_s=1, clock=clock)
    with view, progress.listening(view):
        progress.begin("archetypes", total=1682, unit="items")
        clock.now += 34  # the engine's start-up, then the first request of the first batch
        progress.advance("archetypes", 1)
        clock.now += 2  # the rest of the batch
        progress.advance("archetypes", 63)
        progress.end("archetypes")
    first, second, done = out.getvalue().splitlines()
    assert first == "archetypes: 1/1,682 items (0%)"  # not "34 s/item, 15 h 53 min left"
    assert second == "archetypes: 64/1,682 items (4%), 1.78 items/s, 15 min 10 s left"
    assert done == "archetypes: done: 64/1,682 items in 36 s (1.78 items/s)"


def test_the_plain_view_shows_a_part_under_its_stage_then_forgets_it():
    out, clock = io.StringIO(), Clock()
    view = ProgressView(out, live=False, interval_s=10, clock=clock)
    with view, progress.listening(view):
        progress.begin("recommenders", total=2, unit="runs")
        progress.begin("recommenders/sasrec-id-ce-s0", total=40, unit="epochs")
        clock.now += 8
        progress.advance("recommenders/sasrec-id-ce-s0", detail="epoch 1: valid NDCG@10 0.0100")
        progress.end("recommenders/sasrec-id-ce-s0", "stopped early")
        progress.advance("recommenders", detail="sasrec-id-ce-s0 trained")
    text = out.getvalue()
    assert "recommenders/sasrec-id-ce-s0: 1/40 epochs (2%), 8.0 s/epoch" in text
    assert "recommenders/sasrec-id-ce-s0: done: 1/40 epochs in 8 s" in text
    assert "recommenders/sasrec-id-ce-s0" not in view.stages


def test_the_live_view_draws_bars_for_the_stages():
    out = io.StringIO()
    view = ProgressView(out, live=True)
    with view, progress.listening(view):
        progress.begin("archetypes", total=64, unit="items")
        progress.advance("archetypes", 16, detail="batch 1")
        progress.begin("recommenders/sasrec-id-ce-s0", total=10, unit="epochs")
        progress.advance("recommenders/sasrec-id-ce-s0")
        progress.end("recommenders/sasrec-id-ce-s0")
        progress.end("archetypes")
    drawn = out.getvalue()
    assert "archetypes" in drawn
    assert "16/64 items" in drawn
    assert "\x1b[" in drawn  # drawn for a terminal, not as lines
    assert "sasrec-id-ce-s0" not in view.stages


def test_finished_prefect_steps_become_one_line_each():
    out = io.StringIO()
    view = ProgressView(out, live=False)
    handler = StepLogHandler(view)
    for name, message in [
        ("ingest-dataset-3fa", "Finished in state Completed()"),
        ("ingest-dataset-3fa", "ingest: wrote items (1682 rows)"),
        ("generate-archetypes-a23", "Finished in state Completed()"),  # shown as a stage
        ("build-index-0b1", "Finished in state Failed('boom')"),
    ]:
        record = logging.LogRecord("prefect.task_runs", logging.INFO, "", 0, message, (), None)
        record.task_run_name = name
        handler.emit(record)
    assert out.getvalue().splitlines() == ["✓ ingest-dataset: Completed", "✗ build-index: Failed"]
