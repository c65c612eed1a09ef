"""Settings a dataset can be too small for, checked as soon as the split tables exist, before
the archetypes (the expensive stage) are generated. Each check either adapts the run and says so,
or stops it with one line that names the setting and a value that works:

- `recommenders.evaluation.negatives` stops the run when some user has fewer items it never
  interacted with. A sampled metric is only comparable to another at the same number of
  negatives (HR@10 among 45 candidates is not HR@10 among 100), so the run does not pick a
  smaller number for the user; it names the largest that works.
- `pooling.input_dims` and `pooling.gen_dims` adapt: N item vectors span at most N - 1
  directions, so the PCA keeps min(dims, N - 1) (`pooling.fit_basis`; no more than the model's
  hidden size either, which is known once the model is loaded), with a warning. No run
  key holds the dims except the half variants' (`input-only`, `gen-only`), which split the item
  vector at `pooling.input_dims`: with a half variant in the grid, a capped basis stops the run
  instead, since the split would fall outside the vector.
- `recommend.k` and `similar_items.k` adapt: a list cannot hold more items than there are to
  list, so it is shorter (a user's list also leaves out the items the user has seen), with a
  warning when the catalog itself is smaller than K. No run key holds either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from genair_core.config import PoolingConfig
from genair_core.data.sequences import UserSequences
from genair_core.recommenders.models import get_variant


@dataclass(frozen=True)
class DataLimits:
    """What the checks found: warnings for the settings adapted, and problems for the settings
    the run cannot go on with (each one line naming the setting and a value that works)."""

    warnings: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


def fewest_unseen_items(data: UserSequences) -> tuple[int, int]:
    """(position of the user with the fewest items it never interacted with, how many)."""
    if data.n_users == 0:
        raise ValueError("no users left after the k-core filter")
    users = np.repeat(np.arange(data.n_users), np.diff(data.ptr))
    pairs = np.unique(users * (data.n_items + 1) + data.items)
    distinct = np.bincount(pairs // (data.n_items + 1), minlength=data.n_users)
    user = int(np.argmax(distinct))
    return user, data.n_items - int(distinct[user])


def check_negatives(negatives: int, data: UserSequences, user_ids: Mapping[int, str]) -> list[str]:
    """The sampled protocol needs `negatives` items each user never interacted with; the problem,
    if some user has fewer. `user_ids` maps a user index (`data.user_idx`) to the user's id."""
    position, unseen = fewest_unseen_items(data)
    user = user_ids[int(data.user_idx[position])]
    if unseen >= negatives:
        return []
    return [
        f"recommenders.evaluation.negatives is {negatives}, but user {user!r} has "
        f"interacted with {data.n_items - unseen} of the {data.n_items} items the k-core kept, "
        f"leaving {unseen} to sample from: set recommenders.evaluation.negatives to {unseen} "
        "or less (metrics of other sizes are not comparable)"
    ]


def check_pca_dims(config: PoolingConfig, n_items: int, variants: Sequence[str]) -> DataLimits:
    """The PCA dims `n_items` item vectors can fill: a warning for each that is capped, or a
    problem when a half variant of `variants` splits the item vector at the configured size."""
    most = max(n_items - 1, 1)
    capped = [
        (name, asked)
        for name, asked in (("input_dims", config.input_dims), ("gen_dims", config.gen_dims))
        if asked > most
    ]
    if not capped:
        return DataLimits()
    halves = [v for v in variants if get_variant(v).half is not None]
    what = f"{n_items} items' vectors span at most {most} directions"
    if halves:
        return DataLimits(
            problems=tuple(
                f"pooling.{name} is {asked}, but the {what} and {', '.join(halves)} split the "
                f"item vector at pooling.input_dims: set pooling.{name} to {most} or less"
                for name, asked in capped
            )
        )
    return DataLimits(
        warnings=tuple(
            f"pooling.{name} is {asked}, but the {what}: the PCA keeps at most {most} (no run key "
            "changes; the item vectors are refitted at the configured size once the catalog "
            "has grown)"
            for name, asked in capped
        )
    )


def check_top_k(recommend_k: int, similar_k: int, n_items: int) -> list[str]:
    """Warnings for the top-K lists the catalog's `n_items` items cannot fill: a user's list
    ranks at most every item, an item's neighbours every other one."""
    fits = (("recommend.k", recommend_k, n_items), ("similar_items.k", similar_k, n_items - 1))
    return [
        f"{name} is {k}, but the catalog has {n_items} items: its lists hold at most {most}"
        for name, k, most in fits
        if k > most
    ]
