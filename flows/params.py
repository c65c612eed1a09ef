"""The parameters of the three deployed flows, validated as a whole.

Each flow takes these fields as typed parameters (the Prefect UI builds its run form from them:
text, check boxes, dates, drop-downs) and checks them together through its model here, so a
wrong combination fails before the run touches anything, with one line naming the field. Every
field is plain JSON: a deployment's parameters, a run triggered through the API and the form all
carry them as they are. `config_path` None means `genair.toml` in the working directory (the
checkout a worker runs in), or the defaults; `profile` None means none, or $GENAIR_PROFILE.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from flows.stages import STAGES
from genair_core.config import as_utc
from genair_core.llm.backfill import Backfill
from tasks.settings import RecommenderPolicy, Settings, load_settings

StageName = Literal[STAGES]  # type: ignore[valid-type]  # the names in flows.stages, in order


class FlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    config_path: str | None = None
    profile: str | None = None

    def settings(self) -> Settings:
        """The run's settings: the config file with the profile laid over it (ConfigError)."""
        return load_settings(
            Path(self.config_path) if self.config_path else None, profile=self.profile
        )

    @classmethod
    def checked(cls, **fields: object) -> FlowParams:
        """The model of `fields`, or ValueError with one line per wrong field."""
        try:
            return cls(**fields)
        except ValidationError as err:
            raise ValueError(_describe(err)) from None


class FullParams(FlowParams):
    """genair-full: the stages from `start` to `until`; `force` reruns steps whose inputs did not
    change."""

    force: bool = False
    start: StageName = STAGES[0]
    until: StageName = STAGES[-1]

    @model_validator(mode="after")
    def _in_order(self) -> FullParams:
        if STAGES.index(self.start) > STAGES.index(self.until):
            raise ValueError(f"stage {self.start!r} comes after {self.until!r}")
        return self


class RefreshParams(FlowParams):
    """genair-nightly-refresh: `recommenders` None takes `[refresh] recommenders`."""

    recommenders: RecommenderPolicy | None = None


class BackfillParams(FlowParams):
    """genair-backfill: exactly one of `items`, `since`, `all_items` (genair_core.llm.backfill
    checks it)."""

    items: list[str] = []
    since: date | None = None
    all_items: bool = False
    dry_run: bool = False
    recommenders: RecommenderPolicy | None = None

    @model_validator(mode="after")
    def _one_selection(self) -> BackfillParams:
        self.selection()
        return self

    def selection(self) -> Backfill:
        """The items to regenerate; ValueError when the parameters do not choose exactly one
        way."""
        return Backfill(tuple(self.items), self.since, self.all_items)


def _describe(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "parameters"
        message = problem["msg"].removeprefix("Value error, ")
        got = f" (got {problem['input']!r})" if problem["loc"] else ""
        lines.append(f"{field}: {message}{got}")
    return "invalid parameters: " + "; ".join(lines)


class ColdStartParams(FlowParams):
    """genair-cold-start: `as_of` as `[dataset] as_of` takes it (a date is its midnight, a time
    without an offset is UTC)."""

    as_of: datetime

    @field_validator("as_of", mode="before")
    @classmethod
    def _as_utc(cls, value: object) -> object:
        return as_utc(value)
