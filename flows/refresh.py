"""genair-nightly-refresh: the scheduled catalog refresh, incremental at every stage.

1. ingest the latest catalog and interaction snapshot (dating new and changed items), re-split,
   recount co-occurrence — each skipped when its inputs are unchanged;
2. archetypes for new or changed items only (keyed by content, model, prompt and settings),
   pooled with the stored PCA bases (refit only on `pooling.refit` or a capped basis outgrown);
3. calibrate: new items projected through the stored adapter, retrained only past
   `calibration.max_drift` of co-occurrence drift (or a changed raw space);
4. the FAISS indexes rebuilt only if their vectors changed; retrieval re-evaluated likewise;
5. negatives, recommenders and results as the `recommenders` policy says: `never`, only runs
   whose inputs changed (`if-inputs-changed`, the default of `[refresh] recommenders`), or
   `always` (every run retrained from epoch 0).
"""

from __future__ import annotations

from prefect import flow
from prefect.logging import get_run_logger

from flows.params import RefreshParams
from flows.pipeline import StageRun, run_stages
from flows.stages import REFRESH, stages_of
from genair_core.llm.engines import EngineFactory, make_engine
from tasks.common import exclusive_run
from tasks.settings import RecommenderPolicy

FLOW_NAME = REFRESH


@flow(name=FLOW_NAME)
def genair_nightly_refresh(
    config_path: str | None = None,
    profile: str | None = None,
    recommenders: RecommenderPolicy | None = None,
) -> dict[str, dict]:
    """Bring every table up to date with the latest catalog and interactions, doing only the
    work their changes call for.

    Args:
        config_path: the genair.toml to run with (empty: genair.toml in the working directory).
        recommenders: retrain and evaluate the recommenders never, if-inputs-changed (only runs
            whose inputs changed) or always; empty: the `[refresh] recommenders` setting.
        profile: a [profiles.NAME] bundle of settings from the config file (quick, paper);
            empty: none.
    """
    params = RefreshParams.checked(
        config_path=config_path, recommenders=recommenders, profile=profile
    )
    return run_refresh(params)


def run_refresh(
    params: RefreshParams, *, engine_factory: EngineFactory = make_engine
) -> dict[str, dict]:
    """What `genair_nightly_refresh` runs, with the archetype engines made by `engine_factory`
    (call it inside a flow, as tests do)."""
    settings = params.settings()
    policy = params.recommenders or settings.refresh.recommenders
    get_run_logger().info("refresh: recommenders policy %r", policy)
    parameters = {
        **params.model_dump(mode="json"),
        "recommenders": policy,
        "profile": settings.profile,
    }
    with exclusive_run(settings, FLOW_NAME, parameters) as run_settings:
        run = StageRun(run_settings, retrain=policy, engine_factory=engine_factory)
        return run_stages(stages_of(FLOW_NAME, policy), run)
