"""genair-backfill: regenerate the archetypes and embeddings of chosen items even though their
metadata did not change (after a prompt, model or engine fix), then the stages downstream.

Items are chosen from the catalog as last ingested (the refresh ingests; a backfill reads no
source file): a list of item ids, `since` a UTC day (the items whose metadata was first
ingested on or after it: `items.updated_at`, set when an item is added or its content changes),
or all items that get an archetype. The new archetypes replace the old rows of the same key.
Then pooling (stored PCA bases), calibration (stored adapter unless drift), the indexes and
retrieval follow, and the recommenders as the `recommenders` policy says. `dry_run` reports
what would be regenerated and writes nothing: no table, manifest, part or lock.
"""

from __future__ import annotations

from datetime import date

from prefect import flow

from flows.params import BackfillParams
from flows.pipeline import StageRun, run_stages
from flows.stages import BACKFILL, stages_of
from genair_core.llm.engines import EngineFactory, make_engine
from tasks.archetypes import plan_archetypes, report_backfill_plan
from tasks.common import exclusive_run, with_retries
from tasks.settings import RecommenderPolicy

FLOW_NAME = BACKFILL


@flow(name=FLOW_NAME)
def genair_backfill(
    config_path: str | None = None,
    profile: str | None = None,
    items: list[str] | None = None,
    since: date | None = None,
    all_items: bool = False,
    dry_run: bool = False,
    recommenders: RecommenderPolicy | None = None,
) -> dict[str, dict]:
    """Regenerate the archetypes and embeddings of the chosen items (exactly one of `items`,
    `since`, `all_items`), then the stages downstream of them.

    Args:
        config_path: the genair.toml to run with (empty: genair.toml in the working directory).
        items: item ids to regenerate.
        since: regenerate the items added or changed on or after this day (UTC).
        all_items: regenerate every item that gets an archetype.
        dry_run: only report what would be regenerated; write nothing.
        recommenders: retrain and evaluate the recommenders never, if-inputs-changed or always;
            empty: the `[refresh] recommenders` setting.
        profile: a [profiles.NAME] bundle of settings from the config file (quick, paper);
            empty: none.
    """
    params = BackfillParams.checked(
        config_path=config_path,
        items=items or [],
        since=since,
        all_items=all_items,
        dry_run=dry_run,
        recommenders=recommenders,
        profile=profile,
    )
    return run_backfill(params)


def run_backfill(
    params: BackfillParams, *, engine_factory: EngineFactory = make_engine
) -> dict[str, dict]:
    """What `genair_backfill` runs, with the archetype engines made by `engine_factory` (call it
    inside a flow, as tests do). A dry run returns {"dry_run": the report}."""
    settings = params.settings()
    policy = params.recommenders or settings.refresh.recommenders
    stages = stages_of(FLOW_NAME, policy)
    selection = params.selection()
    if params.dry_run:
        plan = with_retries(plan_archetypes, settings.prefect)(settings, selection)
        names = [stage.name for stage in stages]
        then = names[names.index("archetypes") + 1 :]
        return {"dry_run": with_retries(report_backfill_plan, settings.prefect)(plan, then)}
    parameters = {
        **params.model_dump(mode="json"),
        "recommenders": policy,
        "profile": settings.profile,
    }
    with exclusive_run(settings, FLOW_NAME, parameters) as run_settings:
        run = StageRun(
            run_settings, retrain=policy, backfill=selection, engine_factory=engine_factory
        )
        return run_stages(stages, run)
