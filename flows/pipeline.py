"""genair-full, the whole pipeline: catalog + interactions → validated tables → splits →
co-occurrence → archetypes and hidden-state embeddings → pooled item vectors → calibration →
FAISS indexes → retrieval → recommenders trained and evaluated → results table.

`run_stages` is what all three flows run (genair-full, genair-nightly-refresh in refresh.py,
genair-backfill in backfill.py), each on the stages flows/stages.py gives it."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from prefect import Task, flow

from flows.params import FullParams, StageName
from flows.stages import FULL, STAGES, Stage, between, stages_of
from genair_core.llm.archetypes import ArchetypePlan
from genair_core.llm.backfill import Backfill
from genair_core.llm.engines import EngineFactory, make_engine
from genair_core.tables import VECTOR_SPACES
from tasks.archetypes import plan_archetypes
from tasks.common import exclusive_run, with_retries
from tasks.index import index_vector_space
from tasks.preprocess import check_data_limits
from tasks.report import write_report_task
from tasks.run_summary import publish_summary
from tasks.settings import RecommenderPolicy, Settings

FLOW_NAME = FULL


@flow(name=FLOW_NAME)
def genair_full(
    config_path: str | None = None,
    profile: str | None = None,
    force: bool = False,
    start: StageName = STAGES[0],
    until: StageName = STAGES[-1],
) -> dict[str, dict]:
    """Every stage from `start` to `until` on the configured dataset. Steps whose inputs did not
    change are skipped; outputs are replaced, never appended to. A later `start` uses the tables
    earlier stages left, e.g. retraining recommenders on today's vectors without looking at the
    catalog.

    Args:
        config_path: the genair.toml to run with (empty: genair.toml in the working directory).
        force: rerun the steps whose inputs did not change (archetypes excepted: they are keyed
            by content, model, prompt and settings; a backfill regenerates them).
        start: the first stage to run.
        until: the last stage to run.
        profile: a [profiles.NAME] bundle of settings from the config file (quick, paper);
            empty: none.
    """
    params = FullParams.checked(
        config_path=config_path, force=force, start=start, until=until, profile=profile
    )
    return run_pipeline(
        params.config_path,
        force=params.force,
        start=params.start,
        until=params.until,
        profile=params.profile,
    )


def run_pipeline(
    config_path: str | None = None,
    *,
    force: bool = False,
    until: str = STAGES[-1],
    start: str = STAGES[0],
    profile: str | None = None,
    engine_factory: EngineFactory = make_engine,
) -> dict[str, dict]:
    """What `genair_full` runs, with the archetype engines made by `engine_factory`. Call it
    inside a flow: tests run it in a flow of their own to hand in a scripted engine, which the
    deployed flow's parameters (a JSON form in the UI) cannot carry."""
    params = FullParams.checked(
        config_path=config_path, force=force, start=start, until=until, profile=profile
    )
    settings = params.settings()
    stages = between(params.start, params.until, stages_of(FLOW_NAME))
    parameters = {**params.model_dump(mode="json"), "profile": settings.profile}
    with exclusive_run(settings, FLOW_NAME, parameters) as run_settings:
        run = StageRun(run_settings, force=params.force, engine_factory=engine_factory)
        return run_stages(stages, run)


@dataclass
class StageRun:
    """What the stages of one flow run share: its settings, how it reruns, the archetype plan
    (made once, by the first stage that needs it) and where engines come from."""

    settings: Settings
    force: bool = False
    retrain: RecommenderPolicy = "if-inputs-changed"
    backfill: Backfill | None = None
    engine_factory: EngineFactory = make_engine
    stages: tuple[Stage, ...] = ()  # what this flow run runs, set by run_stages
    _plan: ArchetypePlan | None = None

    @property
    def force_training(self) -> bool:
        """Whether the recommender stages redo their work: `force`, or the policy "always"."""
        return self.force or self.retrain == "always"

    def task(self, task: Task) -> Task:
        """`task` with the configured retries."""
        return with_retries(task, self.settings.prefect)

    def archetype_plan(self) -> ArchetypePlan:
        if self._plan is None:
            self._plan = self.task(plan_archetypes)(self.settings, self.backfill)
        return self._plan


def run_stages(stages: tuple[Stage, ...], run: StageRun) -> dict[str, dict]:
    """Each of `stages`, in order, then the run's summary and report. A stage's task is called
    with the settings and `force` (the recommender stages' `force` also under the policy
    "always"); a stage run by a function gets the StageRun and returns its steps' summaries."""
    summary: dict[str, dict] = {}
    run.stages = stages
    for stage in stages:
        runs = _resolve(stage.runs)
        if not isinstance(runs, Task):
            summary.update(runs(run))
            continue
        force = run.force_training if stage.recommenders else run.force
        options = {"force": force} if "force" in inspect.signature(runs.fn).parameters else {}
        summary[stage.name] = run.task(runs)(run.settings, **options)
    run.task(publish_summary)(summary, run.settings)
    run.task(write_report_task)(run.settings)
    return summary


def run_check_stage(run: StageRun) -> dict[str, dict]:
    """The data limits, the negatives among them only when this run evaluates recommenders."""
    evaluates = any(stage.recommenders for stage in run.stages)
    return {"check": run.task(check_data_limits)(run.settings, evaluates, force=run.force)}


def run_index_stage(run: StageRun) -> dict[str, dict]:
    """One FAISS index a vector space."""
    build = run.task(index_vector_space)
    return {
        f"index-{space}": build(run.settings, space, force=run.force)
        for space in sorted(VECTOR_SPACES)
    }


def _resolve(target: str) -> Callable | Task:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
