"""Which items a backfill regenerates (`genair backfill ITEM… | --since DAY | --all`).

A selection is checked here and nowhere else: the flow's parameters (flows.params) build a
`Backfill` to validate what they were given, the CLI checks named ids against the ingested
catalog with `check_known_items` before a flow starts, and the archetype stage's plan picks the
items with `Backfill.pick` (genair_core.llm.archetypes.make_plan). Importing this module is cheap:
the CLI reads it before it loads any model library.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time


@dataclass(frozen=True)
class Backfill:
    """The items a backfill regenerates, whether or not their archetype exists: the listed
    `item_ids`, the items whose metadata was first ingested on or after the UTC day `since`
    (items.updated_at: added, or content changed), or every item that gets an archetype. Exactly
    one of the three (ValueError otherwise, in the words of the flow's parameters: items, since,
    all_items)."""

    item_ids: tuple[str, ...] = ()
    since: date | None = None
    all_items: bool = False

    def __post_init__(self) -> None:
        given = (
            ("items", bool(self.item_ids)),
            ("since", self.since is not None),
            ("all_items", self.all_items),
        )
        chosen = [name for name, present in given if present]
        if len(chosen) != 1:
            got = f"got {' and '.join(chosen)}" if chosen else "got none"
            raise ValueError(f"give exactly one of items, since or all_items ({got})")
        if any(not item_id.strip() for item_id in self.item_ids):
            raise ValueError("items holds an empty item id")

    def pick(
        self,
        catalog: Sequence[tuple[str, str]],
        wanted: Sequence[tuple[str, str]],
        updated_at: Mapping[str, datetime] | None,
        why_not_wanted: str,
    ) -> list[tuple[str, str]]:
        """The (item_id, content_hash) pairs of `wanted` (the items that get an archetype) this
        backfill regenerates. A listed id that is not in `catalog` or not wanted is an error
        (`why_not_wanted` says which setting leaves items out)."""
        if self.all_items:
            return list(wanted)
        if self.since is not None:
            if updated_at is None:
                raise ValueError("a backfill since a date needs the items' updated_at")
            start = datetime.combine(self.since, time(), tzinfo=UTC)
            return [pair for pair in wanted if updated_at[pair[0]] >= start]
        check_known_items(self.item_ids, {item_id for item_id, _ in catalog})
        by_id = dict(wanted)
        left_out = [item_id for item_id in self.item_ids if item_id not in by_id]
        if left_out:
            raise ValueError(f"item(s) {_ids(left_out)} get no archetype: {why_not_wanted}")
        return sorted({(item_id, by_id[item_id]) for item_id in self.item_ids})


def check_known_items(item_ids: Sequence[str], known: Collection[str]) -> None:
    """ValueError naming the ids of `item_ids` that are not in `known` (the ingested catalog's
    item ids, or those of them among `item_ids`)."""
    unknown = [item_id for item_id in item_ids if item_id not in known]
    if unknown:
        raise ValueError(f"unknown item id(s), not in the ingested catalog: {_ids(unknown)}")


def _ids(item_ids: Sequence[str], shown: int = 10) -> str:
    more = f" and {len(item_ids) - shown} more" if len(item_ids) > shown else ""
    return ", ".join(repr(i) for i in item_ids[:shown]) + more
