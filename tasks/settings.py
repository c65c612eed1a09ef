"""Typed settings for a genair run: one TOML file, overridable by GENAIR_* environment variables.

    GENAIR_PREPROCESS__K_CORE=10 genair run --config genair.toml --profile quick

A profile is a named bundle of settings in the file's `[profiles.NAME]` tables, laid over the rest
of the file; the environment still overrides both. Relative paths in the file are resolved against
the file's folder. The sections themselves live
in `genair_core.config`; this module composes them and adds the orchestration's own.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources import InitSettingsSource

from genair_core.config import (
    CalibrationConfig,
    DatasetConfig,
    EvaluationConfig,
    IndexConfig,
    LlmConfig,
    ModelConfig,
    PoolingConfig,
    PreprocessConfig,
    RecommendConfig,
    RecommenderConfig,
    Section,
    SimilarItemsConfig,
    StorageConfig,
    TrainingConfig,
)

DEFAULT_CONFIG_NAME = "genair.toml"
ENV_PREFIX = "GENAIR_"
DEFAULT_PROFILE = "default"  # the file's settings as they are, no [profiles.*] table applied
PROFILE_ENV = "GENAIR_PROFILE"


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the key."""


class PrefectConfig(Section):
    task_retries: int = Field(2, ge=0)  # for transient failures (I/O) only
    retry_delay_s: float = Field(5.0, ge=0)
    # The temporary server's first start runs its database migrations, which on a 2-core machine
    # can outlast Prefect's default of 20 s.
    ephemeral_startup_timeout_s: int = Field(120, ge=10)
    # Where the archetype batches run (tasks/runners.py, docs/scale.md): "threads" in the flow's
    # process, one batch at a time on the flow's engine; "dask" on Dask workers through
    # prefect-dask, every worker process with an engine of its own.
    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = None  # a running scheduler ("tcp://host:8786"); none: a local one
    dask_workers: int = Field(2, ge=1)  # the local cluster's worker processes, one thread each
    # The nightly refresh's 02:00, in this IANA time zone; read by `prefect deploy` through
    # scripts/deploy (prefect.yaml), so a change takes effect at the next deploy.
    schedule_timezone: str = "UTC"

    @field_validator("schedule_timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError(
                f"unknown time zone {name!r} (an IANA name, e.g. Europe/Berlin)"
            ) from None
        return name

    @model_validator(mode="after")
    def _address_needs_dask(self) -> PrefectConfig:
        if self.dask_address and self.task_runner != "dask":
            raise ValueError('dask_address is set but task_runner is not "dask"')
        return self


# When a refresh or a backfill retrains and evaluates the recommenders: never, when a run's
# inputs (tables and settings) changed since it last trained, or every time.
RecommenderPolicy = Literal["never", "if-inputs-changed", "always"]


class RefreshConfig(Section):
    recommenders: RecommenderPolicy = "if-inputs-changed"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    storage: StorageConfig = StorageConfig()
    dataset: DatasetConfig = DatasetConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    llm: LlmConfig = LlmConfig()
    pooling: PoolingConfig = PoolingConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    index: IndexConfig = IndexConfig()
    similar_items: SimilarItemsConfig = SimilarItemsConfig()
    recommenders: RecommenderConfig = RecommenderConfig()
    recommend: RecommendConfig = RecommendConfig()
    prefect: PrefectConfig = PrefectConfig()
    # The run these settings were handed to (tasks.common.exclusive_run sets it), which the store
    # stamps on every row it writes. Not a setting: left out of every dump, hence of every config
    # hash and step fingerprint.
    run_id: str | None = Field(None, exclude=True)
    refresh: RefreshConfig = RefreshConfig()
    # The profile these settings were read with, as a label for what the run prints and writes;
    # its settings are already in the sections above, so it is left out of every dump too.
    profile: str = Field(DEFAULT_PROFILE, exclude=True)
    # Set by a profile's `smoke = true`: the run trims data, generation or training to check that
    # the pipeline runs end to end, and everything it prints and writes says its numbers are not
    # results.
    smoke_run: bool = Field(False, exclude=True)
    # The config file's settings, the profile laid over them: set on the subclass load_settings
    # makes for one file.
    _file_settings: ClassVar[dict[str, Any]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then the environment, then the file.
        return init_settings, env_settings, InitSettingsSource(settings_cls, cls._file_settings)

    @model_validator(mode="after")
    def _warm_adapter_fits(self) -> Settings:
        """genair-warm starts its adapter from the calibration job's, so their sizes must agree;
        said before a run starts rather than at its first genair-warm task."""
        if "genair-warm" not in self.recommenders.variants:
            return self
        for backbone in self.recommenders.backbones:
            hidden = self.recommenders.for_backbone(backbone)[0].hidden
            if hidden != self.calibration.hidden:
                raise ValueError(
                    f"variant genair-warm needs calibration.hidden ({self.calibration.hidden}) "
                    f"to equal {backbone}'s recommenders hidden size ({hidden})"
                )
        return self


def load_settings(
    path: Path | None = None, profile: str | None = None, **overrides: object
) -> Settings:
    """Read `path` (or ./genair.toml if it exists, else the defaults) with `profile` (or
    $GENAIR_PROFILE, else none) laid over it, plus GENAIR_* variables.

    Raises ConfigError naming every wrong key, e.g. `preprocess.k_core: Input should be greater
    than or equal to 1 (got 0)`, or an unknown profile with the ones the file defines.
    """
    if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
        path = Path(DEFAULT_CONFIG_NAME)
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    profile = profile or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    file_settings, smoke_run = _read_file(path, profile)

    file_bound = type("FileSettings", (Settings,), {"_file_settings": file_settings})
    try:
        settings = file_bound(**overrides)
    except ValidationError as err:
        raise ConfigError(_describe(err, path, profile)) from None
    except ValueError as err:  # a GENAIR_* value that does not parse (SettingsError)
        raise ConfigError(str(err)) from None
    resolved = _resolve_paths(Settings.model_validate(settings.model_dump()), base_dir)
    return resolved.model_copy(update={"profile": profile, "smoke_run": smoke_run})


def _read_file(path: Path | None, profile: str) -> tuple[dict[str, Any], bool]:
    """The file's settings with `profile`'s table laid over them (tables merge key by key; any
    other value, a list included, replaces the file's), and whether the profile says `smoke`."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: {err}") from None
    profiles = data.pop("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise ConfigError(f"{path}: profiles: a table of [profiles.NAME] tables")
    if DEFAULT_PROFILE in profiles:
        raise ConfigError(
            f"{path}: [profiles.{DEFAULT_PROFILE}]: {DEFAULT_PROFILE!r} is the file itself; "
            "put those settings outside [profiles]"
        )
    if profile == DEFAULT_PROFILE:
        return data, False
    if profile not in profiles:
        defined = ", ".join(sorted(profiles)) or "none"
        where = path or "the defaults (no genair.toml)"
        raise ConfigError(f"unknown profile {profile!r}; {where} defines: {defined}")
    overlay = dict(profiles[profile])
    smoke = overlay.pop("smoke", False)
    if not isinstance(smoke, bool):
        raise ConfigError(f"{path}: profiles.{profile}.smoke: true or false (got {smoke!r})")
    return _merged(data, overlay), smoke


def _merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(err: ValidationError, path: Path | None, profile: str = DEFAULT_PROFILE) -> str:
    where = f"in {path} or {ENV_PREFIX}* variables" if path else f"in {ENV_PREFIX}* variables"
    if profile != DEFAULT_PROFILE:
        where = f"{where}, profile {profile}"
    lines = [f"invalid configuration ({where}):"]
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        env = ENV_PREFIX + "__".join(str(part).upper() for part in problem["loc"])
        got = f" (got {problem['input']!r})" if problem["type"] != "missing" else ""
        moved = (
            _moved_recommender_key(problem["loc"]) if problem["type"] == "extra_forbidden" else ""
        )
        lines.append(f"  {key}: {problem['msg']}{got}{moved}  [env: {env}]")
    return "\n".join(lines)


# [recommenders] was one flat section before its model, training and evaluation sections.
_RECOMMENDER_SECTIONS = {
    "model": ModelConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
}


def _moved_recommender_key(loc: tuple[int | str, ...]) -> str:
    """Where a key of the old flat [recommenders] section lives now, as a hint."""
    if len(loc) < 2 or loc[0] != "recommenders":
        return ""
    backbone = loc[2] if len(loc) == 4 and loc[1] == "per_backbone" else None
    name = loc[-1]
    for section, model in _RECOMMENDER_SECTIONS.items():
        if name in model.model_fields and (backbone is None or section != "evaluation"):
            where = f"per_backbone.{backbone}.{section}" if backbone else section
            return f"; it now belongs in [recommenders.{where}]"
    return ""


def _resolve_paths(settings: Settings, base_dir: Path) -> Settings:
    def fix(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else (base_dir / p)

    storage = settings.storage.model_copy(
        update={"root": fix(settings.storage.root), "cache_dir": fix(settings.storage.cache_dir)}
    )
    dataset = settings.dataset
    if dataset.amazon is not None:
        amazon = dataset.amazon.model_copy(
            update={k: fix(getattr(dataset.amazon, k)) for k in ("meta", "ratings", "reviews")}
        )
        dataset = dataset.model_copy(update={"amazon": amazon})
    if dataset.files is not None:
        files = dataset.files.model_copy(
            update={k: fix(getattr(dataset.files, k)) for k in ("catalog", "interactions")}
        )
        dataset = dataset.model_copy(update={"files": files})
    llm = settings.llm
    if llm.model != "default":
        llm = llm.model_copy(update={"model": str(fix(Path(llm.model)))})
    return settings.model_copy(update={"storage": storage, "dataset": dataset, "llm": llm})
