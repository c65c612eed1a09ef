"""Turn a dataset's raw rows into canonical item, interaction and reject rows.

Every input row ends up in exactly one table: accepted into `items` / `interactions`, or
written to `rejects` with the reason, the field, the file and line, and the row as read. Nothing
is dropped silently, so `count(input rows) = count(accepted) + count(rejects)` can be checked
(+ what a replay as of a time holds back, below).

Duplicate items: the first accepted row of an item_id wins. A later row with the same id and the
same metadata (content_hash) is rejected as `duplicate_item`; one with different metadata as
`conflicting_duplicate`, naming the line that won. Choosing the first keeps ingestion a single
streaming pass and makes the outcome independent of anything but file order.

Checks run in this order and the first failing one names the reject: reader error, mapping
(unparseable timestamp or rating), missing id, over-long field, range, unknown item, duplicate.

An item's `updated_at` is when its current metadata was first ingested: `now` for an item that
is new or whose content_hash changed, the earlier ingest's value (`known`) otherwise, so a
re-ingest of the same catalog keeps every date and writes the same table.

Replay as of a time T (`[dataset] as_of`): the catalog and the log as they stood at T. An item
exists from its first interaction on (the source files date nothing else), so an item first
interacted with after T, or never, is not in the catalog yet, and an interaction after T is not
read. Neither is a reject: both are counted as held back (`Held`) and arrive with a later ingest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from genair_core.data.datasets import Dataset, RowError
from genair_core.tables import CATALOG_FIELDS, RAW_MAX_CHARS, RawRecord

# Part of the ingest step's input fingerprint: bump it when a rule here or in a dataset mapping
# changes, so that tables written under the old rules are rebuilt.
INGEST_VERSION = 2  # 2: items.updated_at

REASONS = (
    "missing_id",
    "bad_timestamp",
    "bad_rating",
    "conflicting_duplicate",
    "duplicate_item",
    "duplicate_interaction",
    "unknown_item",
    "invalid_utf8",
    "malformed_json",
    "malformed_row",
    "field_too_long",
)

# The metadata that identifies an item's content; item_id and provenance are deliberately absent.
HASHED_FIELDS = tuple(name for name in CATALOG_FIELDS if name != "item_id")
_TEXT_FIELDS = ("item_id", "title", "brand", "description")
_LIST_FIELDS = ("categories", "features")
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)
_READER_DETAIL = {
    "invalid_utf8": "line is not valid UTF-8",
    "malformed_json": "line is not a JSON object",
    "malformed_row": "row cannot be split into the file's columns",
}

Row = dict[str, object]


def content_hash(item: Mapping[str, object]) -> str:
    """A stable hash of an item's metadata (HASHED_FIELDS): equal metadata, equal hash.

    sha256 of canonical JSON (sorted keys, no whitespace), first 32 hex characters.
    """
    payload = {field: item.get(field) for field in HASHED_FIELDS}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class AsOf:
    """Replay as of `time`; `first_seen`: each item's first interaction (first_interactions)."""

    time: datetime
    first_seen: Mapping[str, datetime]

    def has(self, item_id: str) -> bool:
        first = self.first_seen.get(item_id)
        return first is not None and first <= self.time


@dataclass
class Held:
    """What a replay as of a time held back: rows that exist only after it."""

    items: int = 0
    interactions: int = 0


def first_interactions(
    dataset: Dataset, interaction_records: Iterable[RawRecord]
) -> dict[str, datetime]:
    """{item_id: its earliest interaction's time} over the rows that map to an item id and a
    time (rows that do not are rejected by `ingest`, whatever their time)."""
    first: dict[str, datetime] = {}
    for record in interaction_records:
        if record.error is not None or record.fields is None:
            continue
        try:
            mapped = dataset.map_interaction(record.fields)
        except RowError:
            continue
        item_id, timestamp = _clean_text(mapped.get("item_id")), mapped.get("timestamp")
        if item_id is None or not isinstance(timestamp, datetime):
            continue
        timestamp = timestamp.astimezone(UTC).replace(microsecond=0)
        if item_id not in first or timestamp < first[item_id]:
            first[item_id] = timestamp
    return first


def ingest(
    dataset: Dataset,
    item_records: Iterable[RawRecord],
    interaction_records: Iterable[RawRecord],
    *,
    max_field_chars: int,
    known: Mapping[str, tuple[str, datetime]] | None = None,
    now: datetime | None = None,
    as_of: AsOf | None = None,
    held: Held | None = None,
    batch_size: int = 10_000,
) -> Iterator[tuple[str, list[Row]]]:
    """Yield (table, rows) batches: the whole catalog and its rejects first, then interactions.

    `dataset` maps the records' fields; the catalog records are all consumed before the first
    interaction record is asked for. Rows have exactly the columns of genair_core.tables ITEMS,
    INTERACTIONS or REJECTS. `known`: {item_id: (content_hash, updated_at)} of the catalog the
    previous ingest wrote; `now` (default: the current time) dates items that are new or changed.
    `as_of`: replay the catalog and the log as they stood then, counting what it holds back in
    `held`. Only the de-duplication state (item ids with their hash, interaction keys), `known`
    and `as_of` are held in memory.
    """
    out = _Batches(batch_size)
    known = known or {}
    held = held if held is not None else Held()
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    accepted: dict[str, tuple[str, int]] = {}  # item_id -> (content_hash, line)
    for record in item_records:
        table, row = _item_outcome(dataset, record, accepted, max_field_chars)
        if table == "items" and as_of is not None and not as_of.has(str(row["item_id"])):
            held.items += 1
            continue
        if table == "items":
            previous = known.get(str(row["item_id"]))
            same = previous is not None and previous[0] == row["content_hash"]
            row["updated_at"] = previous[1] if same else now
        yield from out.add(table, row)
    yield from out.flush()

    seen: set[tuple[str, str, int]] = set()
    until = as_of.time if as_of is not None else None
    for record in interaction_records:
        outcome = _interaction_outcome(dataset, record, accepted, seen, max_field_chars, until)
        if outcome is None:
            held.interactions += 1
            continue
        yield from out.add(*outcome)
    yield from out.flush()


class _Batches:
    """Collects rows per table and hands out a batch whenever one reaches `size`."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"batch_size must be at least 1, got {size}")
        self._size = size
        self._rows: dict[str, list[Row]] = {}

    def add(self, table: str, row: Row) -> Iterator[tuple[str, list[Row]]]:
        rows = self._rows.setdefault(table, [])
        rows.append(row)
        if len(rows) >= self._size:
            self._rows[table] = []
            yield table, rows

    def flush(self) -> Iterator[tuple[str, list[Row]]]:
        for table, rows in self._rows.items():
            if rows:
                yield table, rows
        self._rows = {}


# --- items ------------------------------------------------------------------------------------


def _item_outcome(
    dataset: Dataset,
    record: RawRecord,
    accepted: dict[str, tuple[str, int]],
    limit: int,
) -> tuple[str, Row]:
    if record.error is not None or record.fields is None:
        return _reader_reject("items", record)
    try:
        item = _clean_item(dataset.map_item(record.fields))
    except RowError as err:
        return _reject("items", record, err.field, err.reason, err.detail)
    item_id = item["item_id"]
    if not isinstance(item_id, str):
        return _reject("items", record, "item_id", "missing_id", "item_id is missing or empty")
    too_long = _too_long(item, limit)
    if too_long is not None:
        return _reject("items", record, too_long[0], "field_too_long", too_long[1])
    digest = content_hash(item)
    if item_id in accepted:
        first_digest, first_line = accepted[item_id]
        if first_digest == digest:
            reason, how = "duplicate_item", "identical"
        else:
            reason, how = "conflicting_duplicate", "different"
        detail = f"item_id {item_id!r} already accepted from line {first_line} with {how} metadata"
        return _reject("items", record, "item_id", reason, detail)
    accepted[item_id] = (digest, record.line)
    row: Row = {"item_id": item_id, "content_hash": digest}
    row.update((field, item[field]) for field in HASHED_FIELDS)
    row.update(source=record.source, line=record.line)
    return "items", row


def _clean_item(mapped: Mapping[str, object]) -> Row:
    """Strip strings, turn empty strings / lists / attribute maps into None."""
    item: Row = {field: _clean_text(mapped.get(field)) for field in _TEXT_FIELDS}
    for field in _LIST_FIELDS:
        item[field] = _clean_list(mapped.get(field))
    item["price"] = mapped.get("price")
    item["release_year"] = mapped.get("release_year")
    attributes = mapped.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise TypeError(f"dataset mapping returned {type(attributes).__name__} for attributes")
    cleaned = {str(k): _clean_text(v) for k, v in attributes.items()}
    item["attributes"] = {k: v for k, v in cleaned.items() if v is not None} or None
    return item


def _clean_text(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"dataset mapping returned {type(value).__name__} for a text field")
    return value.strip() or None


def _clean_list(value: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise TypeError(f"dataset mapping returned {type(value).__name__} for a list field")
    cleaned = [text for text in (_clean_text(v) for v in value) if text is not None]
    return cleaned or None


def _too_long(item: Row, limit: int) -> tuple[str, str] | None:
    """(field, detail) of the first text longer than `limit` characters, else None."""
    texts: list[tuple[str, str]] = [(f, v) for f in _TEXT_FIELDS if isinstance(v := item[f], str)]
    for field in _LIST_FIELDS:
        values = item[field]
        if isinstance(values, list):
            texts.append((field, ", ".join(values)))
    attributes = item["attributes"]
    if isinstance(attributes, dict):
        texts.extend((f"attributes.{key}", value) for key, value in attributes.items())
    for field, text in texts:
        if len(text) > limit:
            return field, f"{field} has {len(text):,} characters (limit {limit:,})"
    return None


# --- interactions -----------------------------------------------------------------------------


def _interaction_outcome(
    dataset: Dataset,
    record: RawRecord,
    accepted: Mapping[str, object],
    seen: set[tuple[str, str, int]],
    limit: int,
    until: datetime | None,
) -> tuple[str, Row] | None:
    """(table, row), or None for a valid row after `until`, which a replay holds back."""
    table = "interactions"
    if record.error is not None or record.fields is None:
        return _reader_reject(table, record)
    try:
        mapped = dataset.map_interaction(record.fields)
    except RowError as err:
        return _reject(table, record, err.field, err.reason, err.detail)
    user_id = _clean_text(mapped.get("user_id"))
    item_id = _clean_text(mapped.get("item_id"))
    if user_id is None or item_id is None:
        field = "user_id" if user_id is None else "item_id"
        return _reject(table, record, field, "missing_id", f"{field} is missing or empty")
    for field, value in (("user_id", user_id), ("item_id", item_id)):
        if len(value) > limit:
            detail = f"{field} has {len(value):,} characters (limit {limit:,})"
            return _reject(table, record, field, "field_too_long", detail)
    timestamp = mapped.get("timestamp")
    if not isinstance(timestamp, datetime):
        raise TypeError(f"dataset mapping returned {type(timestamp).__name__} for timestamp")
    timestamp = timestamp.astimezone(UTC).replace(microsecond=0)
    if not _EARLIEST <= timestamp <= _LATEST:
        detail = f"timestamp {timestamp.isoformat()} is outside 1970-01-01..2100-01-01"
        return _reject(table, record, "timestamp", "bad_timestamp", detail)
    if until is not None and timestamp > until:
        return None
    if item_id not in accepted:
        detail = f"item_id {item_id!r} is not in the accepted catalog"
        return _reject(table, record, "item_id", "unknown_item", detail)
    key = (user_id, item_id, int(timestamp.timestamp()))
    if key in seen:
        detail = (
            f"user {user_id!r} already has an accepted interaction with item {item_id!r} "
            f"at {timestamp.isoformat()}"
        )
        return _reject(table, record, None, "duplicate_interaction", detail)
    seen.add(key)
    return table, {
        "user_id": user_id,
        "item_id": item_id,
        "timestamp": timestamp,
        "rating": mapped.get("rating"),
        "source": record.source,
        "line": record.line,
    }


# --- rejects ----------------------------------------------------------------------------------


def _reader_reject(table: str, record: RawRecord) -> tuple[str, Row]:
    reason = record.error or "malformed_row"
    detail = record.detail or _READER_DETAIL.get(reason, reason)
    return _reject(table, record, None, reason, detail)


def _reject(
    table: str, record: RawRecord, field: str | None, reason: str, detail: str
) -> tuple[str, Row]:
    return "rejects", {
        "table": table,
        "source": record.source,
        "line": record.line,
        "field": field,
        "reason": reason,
        "detail": detail,
        "raw": record.raw[:RAW_MAX_CHARS],
    }
