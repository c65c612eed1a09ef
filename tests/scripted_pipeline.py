"""The whole pipeline with the test's own archetype engine factory: `run_pipeline` inside a flow
of the tests' own, since the deployed flow takes JSON parameters only."""

from __future__ import annotations

from prefect import flow

from flows.pipeline import run_pipeline
from flows.stages import STAGES
from genair_core.engines import EngineFactory


@flow(name="genair-pipeline-scripted", validate_parameters=False)
def scripted_pipeline(
    config_path: str,
    engine_factory: EngineFactory,
    force: bool = False,
    until: str = STAGES[-1],
    start: str = STAGES[0],
) -> dict[str, dict]:
    return run_pipeline(
        config_path, force=force, until=until, start=start, engine_factory=engine_factory
    )
