"""Reading the nightly exports back: one user's list from `recommendations`, with titles."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.compute as pc

from storage.delta import current_version, read_version
from storage.store import Store


@dataclass(frozen=True)
class UserList:
    version: int
    model_run: str
    popularity: bool  # the popularity list: the model could represent none of the user's items
    rows: list[dict]  # rank, item_id, score, is_new_item, title; by rank


def read_user_list(store: Store, user_id: str, version: int | None = None) -> UserList | None:
    """`user_id`'s list in `version` of `recommendations` (default: the current one); None when
    that version holds no list for the user."""
    version = current_version(store, "recommendations") if version is None else version
    if version is None:
        return None
    rows = read_version(store, "recommendations", version, filter=pc.field("user_id") == user_id)
    if rows.num_rows == 0:
        return None
    rows = rows.sort_by("rank")
    titles = store.read_table("items", columns=["item_id", "title"])
    title_of = dict(zip(titles["item_id"].to_pylist(), titles["title"].to_pylist(), strict=True))
    listed = [
        {**row, "title": title_of.get(row["item_id"])}
        for row in rows.select(["rank", "item_id", "score", "is_new_item"]).to_pylist()
    ]
    first = rows.slice(0, 1).to_pylist()[0]
    return UserList(version, first["model_run"], first["is_popularity_list"], listed)
