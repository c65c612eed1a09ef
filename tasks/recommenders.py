"""The recommender stages: fixed evaluation negatives, one task per (backbone, variant, seed),
and the results table over all of them."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from genair_core.config import RecommenderConfig, Settings
from genair_core.experiment import (
    TRAINING_VERSION,
    RunSpec,
    metric_rows,
    resolve_device,
    train_and_evaluate,
    train_config,
)
from genair_core.losses import CooccurrenceLookup
from genair_core.metrics import rank_metrics, sample_negatives
from genair_core.models import get_variant
from genair_core.models.item_encoders import frozen_table
from genair_core.results import (
    RunResult,
    render_group_table,
    render_results_markdown,
    summarize,
)
from genair_core.sequences import UserSequences
from genair_core.training import popularity_ranks
from storage.checkpoints import RunCheckpoints, save_weights
from storage.store import Store, fingerprint
from storage.vectors import to_matrix
from tasks.common import TASK_DEFAULTS, run_step, store_for

NEGATIVES_VERSION = 1
RESULTS_REPORT = "recommenders"


@task(name="eval-negatives", **TASK_DEFAULTS)
def sample_eval_negatives(settings: Settings, force: bool = False) -> dict[str, object]:
    """The sampled protocol's candidates, drawn once per user and shared by every run."""
    store = store_for(settings)
    cfg = settings.recommenders
    inputs = fingerprint(
        NEGATIVES_VERSION,
        cfg.negatives,
        cfg.negatives_seed,
        store.table_info("sequences").sha256,
        store.table_info("item_index").sha256,
    )

    def produce() -> tuple[dict, dict]:
        data = load_sequences(store)
        ptr, items = data.all_items_csr()
        negatives = sample_negatives(ptr, items, data.n_items, cfg.negatives, cfg.negatives_seed)
        table = pa.table(
            {
                "user_idx": pa.array(data.user_idx, pa.int32()),
                "negatives": pa.array(list(negatives), pa.list_(pa.int32())),
            }
        )
        info = store.write_table("eval_negatives", table)
        return {"eval_negatives": info}, {"users": data.n_users, "per_user": cfg.negatives}

    return run_step(store, "negatives", inputs, produce, force=force)


@task(name="train-recommender", task_run_name="train-{backbone}-{variant}-s{seed}", **TASK_DEFAULTS)
def train_recommender(
    settings: Settings, backbone: str, variant: str, seed: int, force: bool = False
) -> dict[str, object]:
    """Train and evaluate one run. A retry or a rerun resumes from the run's last epoch
    checkpoint; a run whose inputs and settings are unchanged since it finished is skipped."""
    store = store_for(settings)
    cfg = settings.recommenders.for_backbone(backbone)
    spec = RunSpec(backbone, variant, seed, cfg.loss)
    kind = get_variant(variant)
    needs = ["sequences", "item_index", "eval_negatives"]
    needs += ["item_embeddings"] if kind.frozen else []
    needs += ["cooccurrence"] if kind.calibrated else []
    settings_key = run_settings_key(cfg, backbone)
    inputs = fingerprint(
        TRAINING_VERSION,
        settings_key,
        settings.pooling.input_dims,
        spec.name,
        *(store.table_info(name).sha256 for name in needs),
    )
    run_id = inputs[:16]
    run_dir = store.recommender_dir(spec.name)
    checkpoints = RunCheckpoints(run_dir / f"checkpoints-{run_id}")

    def produce() -> tuple[dict, dict]:
        saved = checkpoints.load()
        if force and saved is not None and saved[0].finished(train_config(cfg, seed)):
            checkpoints.clear()  # retrain from scratch; an unfinished run (a retry) resumes
        elif saved is not None:
            get_run_logger().info("%s: resuming after epoch %d", spec.name, saved[0].epoch)
        data = load_sequences(store)
        table = load_frozen_table(store) if kind.frozen else None
        lookup = load_cooccurrence(store, data.n_items) if kind.calibrated else None
        device = resolve_device(cfg.device)
        outcome = train_and_evaluate(
            spec,
            cfg,
            data,
            load_negatives(store, data),
            checkpoints,
            table=table,
            lookup=lookup,
            input_dims=settings.pooling.input_dims,
            device=device,
        )
        columns = {
            "run_id": run_id,
            "dataset": settings.dataset.name,
            "backbone": backbone,
            "variant": variant,
            "seed": seed,
            "loss": cfg.loss,
        }
        rows = metric_rows(outcome.valid, outcome.test, data, cfg.tail_share)
        metrics = [{**columns, **row} for row in rows]
        ranks = [
            {
                **columns,
                "split": split,
                "user_idx": int(user),
                "item_idx": int(item),
                "rank_full": int(full),
                "rank_sampled": int(sampled),
            }
            for split, ev in (("valid", outcome.valid), ("test", outcome.test))
            for user, item, full, sampled in zip(
                data.user_idx[ev.users], ev.targets, ev.full, ev.sampled, strict=True
            )
        ]
        log = [
            {**columns, **{k: v for k, v in epoch.items() if k in _LOG_COLUMNS}}
            for epoch in outcome.state.history
        ]
        outputs = {
            "metrics": store.write_part("metrics", spec.name, "final", metrics),
            "eval_ranks": store.write_part("eval_ranks", spec.name, "final", ranks),
            "training_log": store.write_part("training_log", spec.name, "final", log),
        }
        save_weights(
            run_dir / "best.safetensors",
            outcome.best_weights,
            {"run_id": run_id, "run": spec.name, "epoch": str(outcome.state.best_epoch)},
        )
        for stale in run_dir.glob("checkpoints-*"):
            if stale != checkpoints.folder:
                shutil.rmtree(stale, ignore_errors=True)
        test = {k: float(v.mean()) for k, v in rank_metrics(outcome.test.full).items()}
        seconds = [epoch["seconds"] for epoch in outcome.state.history]
        summary = {
            "run": spec.name,
            "run_id": run_id,
            "device": str(device),
            "epochs": outcome.state.epoch,
            "best_epoch": outcome.state.best_epoch,
            "valid_ndcg@10": outcome.state.best_score,
            "test_hr@10": test["hr@10"],
            "test_ndcg@10": test["ndcg@10"],
            "median_epoch_seconds": float(np.median(seconds)) if seconds else 0.0,
        }
        get_run_logger().info("%s: %s", spec.name, summary)
        return outputs, summary

    with checkpoints.exclusive():
        return run_step(store, f"train-{spec.name}", inputs, produce, force=force)


_LOG_COLUMNS = {
    "epoch",
    "train_loss",
    "rec_loss",
    "cal_loss",
    "valid_hr@10",
    "valid_ndcg@10",
    "seconds",
}


@task(name="recommender-results", **TASK_DEFAULTS)
def publish_results(settings: Settings, runs: list[tuple[str, str, int]]) -> str:
    """The results table (backbone × variant, mean ± std over seeds, paired test against `id`)
    for both protocols, as a Prefect artifact and as reports/recommenders.md. Runs that have not
    finished are left out (the Seeds column says how many each row has)."""
    store = store_for(settings)
    data = load_sequences(store)
    negatives = load_negatives(store, data)
    popularity = popularity_ranks(data, "test", negatives)
    columns = {
        "run_id": "popularity",
        "dataset": settings.dataset.name,
        "backbone": "popularity",
        "variant": "-",
        "seed": 0,
        "loss": "-",
    }
    rows = metric_rows(
        popularity_ranks(data, "valid", negatives),
        popularity,
        data,
        settings.recommenders.tail_share,
    )
    store.write_part("metrics", "popularity", "final", [{**columns, **row} for row in rows])
    test_ranks = {}
    for backbone, variant, seed in runs:
        ranks = store.read_parts(
            "eval_ranks",
            run_name(settings, backbone, variant, seed),
            filter=pc.field("split") == "test",
        )
        if ranks is not None:
            test_ranks[(backbone, variant, seed)] = ranks.sort_by("user_idx")
    if not test_ranks:
        raise ValueError("no recommender run has written results yet")

    titles = {
        "full": "Test, full ranking (all items, the user's history masked)",
        "sampled": f"Test, sampled ({settings.recommenders.negatives} fixed negatives per user)",
    }
    sections = [f"# Recommenders on {settings.dataset.name}", ""]
    sections += [
        f"{backbone} trains with its own settings: "
        + ", ".join(f"{key} = {value}" for key, value in overrides.items())
        + "."
        for backbone, overrides in settings.recommenders.per_backbone.items()
        if backbone in settings.recommenders.backbones and overrides
    ]
    sections += [""] if sections[-1] else []
    for protocol, title in titles.items():
        results = [
            RunResult(*run, rank_metrics(ranks[f"rank_{protocol}"].to_numpy()))
            for run, ranks in test_ranks.items()
        ]
        baseline = rank_metrics(getattr(popularity, protocol))
        sections += [
            render_results_markdown(summarize(results), title=title),
            f"Popularity (training counts): HR@10 {baseline['hr@10'].mean():.4f}, "
            f"NDCG@10 {baseline['ndcg@10'].mean():.4f}.",
            "",
        ]
    metrics = []
    for run in test_ranks:
        name = run_name(settings, *run)
        part = store.read_parts(
            "metrics",
            name,
            filter=(pc.field("protocol") == "full") & (pc.field("split") == "test"),
        )
        metrics += part.to_pylist() if part is not None else []
    sections += [
        "## Test NDCG@10 by user group (full ranking, mean over seeds)",
        "",
        render_group_table(metrics),
        f"tail: the held-out item is among the least popular items that together hold "
        f"{settings.recommenders.tail_share:.0%} of the training interactions; short: the "
        "user's training history is at most the median length.",
        "",
    ]
    markdown = "\n".join(sections)
    path = store.write_report(RESULTS_REPORT, markdown)
    create_markdown_artifact(
        key="genair-recommenders", markdown=markdown, description="recommender results"
    )
    get_run_logger().info("results written to %s", path)
    return markdown


def run_name(settings: Settings, backbone: str, variant: str, seed: int) -> str:
    return RunSpec(backbone, variant, seed, settings.recommenders.for_backbone(backbone).loss).name


def run_settings_key(cfg: RecommenderConfig, backbone: str) -> dict[str, object]:
    """The settings that decide what a run computes, for its cache key. `mask_last_prob` is in
    BERT4Rec's key only; the older BERT4Rec-only `mask_prob` stays in every key, as it was when
    the finished runs were keyed, so that they stay valid."""
    exclude = {"backbones", "variants", "seeds", "device", "per_backbone"}
    if backbone != "bert4rec":
        exclude.add("mask_last_prob")
    return cfg.model_dump(mode="json", exclude=exclude)


def load_sequences(store: Store) -> UserSequences:
    n_items = store.table_info("item_index").rows
    return UserSequences.from_table(
        store.read_table("sequences", columns=["user_idx", "position", "item_idx", "split"]),
        n_items,
    )


def load_negatives(store: Store, data: UserSequences) -> np.ndarray:
    """(n_users, m) negatives in the row order of `data`."""
    table = store.read_table("eval_negatives")
    by_user = dict(zip(table["user_idx"].to_pylist(), range(table.num_rows), strict=True))
    missing = [int(u) for u in data.user_idx if int(u) not in by_user]
    if missing:
        raise ValueError(
            f"eval_negatives has no row for {len(missing)} users (first: {missing[:5]}); "
            "rerun the negatives stage"
        )
    rows = np.array([by_user[int(u)] for u in data.user_idx])
    return np.stack(table["negatives"].to_numpy(zero_copy_only=False))[rows]


def load_frozen_table(store: Store) -> torch.Tensor:
    index = store.read_table("item_index", columns=["item_idx", "item_id"]).sort_by("item_idx")
    vectors = store.read_table("item_embeddings", columns=["item_id", "vector"])
    return frozen_table(
        index["item_id"].to_pylist(), vectors["item_id"].to_pylist(), to_matrix(vectors["vector"])
    )


def load_cooccurrence(store: Store, n_items: int) -> CooccurrenceLookup:
    """The calibration weights; a missing or unreadable table stops the run (the reference
    silently trains with w = 1 instead)."""
    pairs = store.read_table("cooccurrence", columns=["i", "j", "s"])
    return CooccurrenceLookup.from_pairs(
        pairs["i"].to_numpy(), pairs["j"].to_numpy(), pairs["s"].to_numpy(), n_items
    )
