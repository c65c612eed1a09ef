"""genair-cold-start: the models trained as of T score every interaction after it, new items
included, after a refresh has brought those items in (genair_core.recommenders.cold_start;
docs/results.md, "Cold start", says how the study runs the three steps)."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from flows.params import ColdStartParams
from tasks.cold_start import evaluate_cold_start
from tasks.common import exclusive_run, with_retries

FLOW_NAME = "genair-cold-start"


@flow(name=FLOW_NAME)
def genair_cold_start(
    as_of: datetime, config_path: str | None = None, profile: str | None = None
) -> dict[str, dict]:
    """Evaluate the finished runs of this storage root, trained as of `as_of`, on every
    interaction after it.

    Args:
        as_of: the time the runs were trained as of (`[dataset] as_of` of that run); without
            an offset, UTC.
        config_path: the genair.toml to run with (empty: genair.toml in the working directory).
        profile: a [profiles.NAME] bundle of settings from the config file; empty: none.
    """
    params = ColdStartParams.checked(config_path=config_path, profile=profile, as_of=as_of)
    settings = params.settings()
    with exclusive_run(settings, FLOW_NAME, params.model_dump(mode="json")) as run_settings:
        task = with_retries(evaluate_cold_start, run_settings.prefect)
        return {"cold-start": task(run_settings, params.as_of)}
