"""What a recommender run is: its (backbone, variant, seed) and settings, its name, the columns
that mark its rows, and its cache key — what decides its result, hashed into its `run_key`.

    run = RunSpec.of(RecommenderConfig(), "sasrec", "genair", seed=44)
    run.name                                        # "sasrec-genair-ce-s44"
    key = run.cache_key(input_dims=384, table_hashes=hashes)  # hashed by the orchestration

The key names the model and training settings one by one (`MODEL_KEY`, `TRAINING_KEY`), not by
dumping their sections: every field of ModelConfig and TrainingConfig is either keyed or listed
as not changing a result, and a test fails for a field that is neither. A setting added later is
keyed only while it differs from its default (`KeyedFields.added`), so every key made before it
existed stays what it was and no finished run trains again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from genair_core.config import ModelConfig, RecommenderConfig, Section, TrainingConfig
from genair_core.item_space.calibration import Adapter
from genair_core.recommenders.models import get_variant

# Part of every run's cache key: bump when the same inputs would train or score differently.
# 2: the key became RunSpec.cache_key's explicit list instead of every setting.
TRAINING_VERSION = 2
RUN_TABLES = ("sequences", "item_index", "eval_negatives")


@dataclass(frozen=True)
class KeyedFields:
    """Which fields of a settings section enter a run's cache key, decided field by field."""

    # Always keyed, in this order: the fields the section had when the key was made explicit
    # (TRAINING_VERSION 2). Never reorder or remove one: every stored key would change.
    always: tuple[str, ...]
    # Fields added since, keyed only while they differ from their default: a run that leaves
    # one at its default keeps the key it had before the field existed.
    added: tuple[str, ...] = ()
    # Fields that do not change a run's result (where or how fast it runs), in no key.
    not_keyed: tuple[str, ...] = ()

    def undecided(self, section: type[Section]) -> list[str]:
        """What is wrong with these lists for `section`: its fields listed in no group, names
        listed twice, and names it has no field of (empty when every field is decided)."""
        listed = [*self.always, *self.added, *self.not_keyed]
        missing = [name for name in section.model_fields if name not in listed]
        twice = sorted({name for name in listed if listed.count(name) > 1})
        unknown = sorted(set(listed) - set(section.model_fields))
        return [*missing, *twice, *unknown]

    def key(self, settings: Section, leave_out: frozenset[str] = frozenset()) -> dict[str, object]:
        """The keyed settings as JSON values: `always`, then each `added` field whose value is
        not its default; `leave_out` names fields this run does not use (BERT4Rec's masking
        for another backbone). A field listed nowhere counts as `added`, so that a setting
        nobody decided about still retrains the runs that change it."""
        values = settings.model_dump(mode="json")
        key = {name: values[name] for name in self.always if name not in leave_out}
        fields = type(settings).model_fields
        for name in fields:
            if name in self.always or name in self.not_keyed or name in leave_out:
                continue
            if getattr(settings, name) != fields[name].get_default(call_default_factory=True):
                key[name] = values[name]
        return key


MODEL_KEY = KeyedFields(
    always=(
        "hidden",
        "max_len",
        "n_layers",
        "n_heads",
        "dropout",
        "mask_prob",
        "mask_last_prob",
    ),
    added=("adapter_dropout",),
)
TRAINING_KEY = KeyedFields(
    always=("loss", "batch_size", "lr", "max_epochs", "patience", "tau", "alpha"),
)
BERT4REC_ONLY = frozenset({"mask_prob", "mask_last_prob"})
CALIBRATION_ONLY = frozenset({"tau", "alpha"})


@dataclass(frozen=True)
class RunSpec:
    """One (backbone, variant, seed) with the model and training settings it runs with."""

    backbone: str
    variant: str
    seed: int
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tag: str = ""  # RecommenderConfig.tag: part of the name, not of the cache key

    @classmethod
    def of(cls, config: RecommenderConfig, backbone: str, variant: str, seed: int) -> RunSpec:
        """The run with `backbone`'s `per_backbone` settings applied."""
        model, training = config.for_backbone(backbone)
        return cls(backbone, variant, seed, model, training, config.tag)

    @classmethod
    def grid(cls, config: RecommenderConfig) -> list[RunSpec]:
        """Every run of `config`'s grid, in the order of RecommenderConfig.runs."""
        return [cls.of(config, *run) for run in config.runs()]

    @property
    def name(self) -> str:
        name = f"{self.backbone}-{self.variant}-{self.training.loss}-s{self.seed}"
        return f"{name}-{self.tag}" if self.tag else name

    @property
    def tables(self) -> list[str]:
        """The tables the run reads: item vectors for frozen variants, co-occurrence for
        calibrated ones."""
        kind = get_variant(self.variant)
        return [
            *RUN_TABLES,
            *(["item_embeddings"] if kind.frozen else []),
            *(["cooccurrence"] if kind.calibrated else []),
        ]

    @property
    def warm_start(self) -> bool:
        """Whether the run starts its adapter from the calibration job's (`genair-warm`)."""
        return get_variant(self.variant).warm

    def check_warm_start(self, calibration_hidden: int) -> None:
        """A `genair-warm` run needs the calibration adapter's output size to be its own: one
        error naming both settings rather than a resized (no longer trained) adapter."""
        if self.warm_start and calibration_hidden != self.model.hidden:
            raise ValueError(
                f"{self.variant} starts its adapter from the calibration job's, but "
                f"calibration.hidden is {calibration_hidden} and recommenders.model.hidden is "
                f"{self.model.hidden} for {self.backbone} (with its per_backbone settings): set "
                "them equal"
            )

    def cache_key(
        self, input_dims: int, table_hashes: dict[str, str], adapter: str | None = None
    ) -> list[object]:
        """What decides the run's ranks and training log, for its cache key: the run, its model
        and training settings (MODEL_KEY and TRAINING_KEY; BERT4Rec's masking only for BERT4Rec,
        the calibration weights only for calibrated variants), the split of the item vectors
        for the half variants, and the hashes of `self.tables`; for `genair-warm` only,
        `adapter`, the identity of the calibration adapter it starts from (a retrained
        calibration retrains those runs and no others). Left out: the grid, `workers` and
        `device` (which runs, how many at a time, where) and the evaluation settings (the
        negatives are in eval_negatives' hash; `tail_share` only groups the metrics, which are
        rescored without training)."""
        kind = get_variant(self.variant)
        key = [
            TRAINING_VERSION,
            self.backbone,
            self.variant,
            self.seed,
            MODEL_KEY.key(
                self.model, frozenset() if self.backbone == "bert4rec" else BERT4REC_ONLY
            ),
            TRAINING_KEY.key(self.training, frozenset() if kind.calibrated else CALIBRATION_ONLY),
            input_dims if kind.half is not None else None,
            {name: table_hashes[name] for name in self.tables},
        ]
        if kind.warm:  # appended, so that every other run's key stays what it was
            if adapter is None:
                raise ValueError(f"the key of a {self.variant} run needs its calibration adapter")
            key.append({"calibration_adapter": adapter})
        return key

    def columns(self, run_key: str, dataset: str) -> dict[str, object]:
        """The columns that say which run wrote a row, on every row it writes."""
        return {
            "run_key": run_key,
            "dataset": dataset,
            "backbone": self.backbone,
            "variant": self.variant,
            "seed": self.seed,
            "loss": self.training.loss,
        }


@dataclass(frozen=True)
class WarmStart:
    """The calibration job's adapter as a `genair-warm` run starts from it."""

    weights: dict[str, np.ndarray]  # the adapter's state dict (Linear, LayerNorm, Linear)
    identity: str  # "<version>:<hash of the weights>", part of those runs' cache keys

    @classmethod
    def from_stored(
        cls, tensors: Mapping[str, np.ndarray], manifest: Mapping[str, object]
    ) -> WarmStart:
        """From what storage.calibration keeps. The identity hashes the weights themselves
        besides the manifest's version, so an adapter retrained under the same version (on
        another device) is still another adapter."""
        adapter = Adapter.from_stored(tensors, manifest)
        digest = hashlib.sha256()
        for name in sorted(adapter.weights):
            array = np.ascontiguousarray(adapter.weights[name], dtype=np.float32)
            digest.update(f"{name}:{array.shape}".encode())
            digest.update(array.tobytes())
        return cls(
            weights=dict(adapter.weights),
            identity=f"{adapter.info['version']}:{digest.hexdigest()[:32]}",
        )
