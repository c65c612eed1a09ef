"""The contract every dataset meets, and the value parsers the datasets share.

A dataset is a pure mapping: it never opens a file. Whoever reads the source (storage.datasets
in a run, any iterable of RawRecords in a notebook) hands genair_core.data.ingest the records, and
ingest asks the dataset to map each record's fields to canonical values:

* `map_item` -> CATALOG_FIELDS: item_id, title, brand, categories, description, features, price,
  release_year, attributes (str | None, list[str] | None, float | None, int | None,
  dict[str, str]);
* `map_interaction` -> INTERACTION_FIELDS: user_id, item_id, timestamp (aware datetime), rating
  (float | None).

Mapping only converts; the rules shared by all datasets (ids present, strings stripped, length
limits, duplicates, timestamp range) live in genair_core.data.ingest. A value that makes the row
unusable raises RowError, which ingest turns into a reject.

A typed catalog field whose value does not parse (price "$10 - $20", release year "n/a") is not a
reason to lose the item: the field becomes None and the raw text is kept in `attributes` under
the field's name, where it can still be read.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Literal, Protocol, TypeVar

from genair_core.config import DatasetConfig

TimestampFormat = Literal["auto", "unix_s", "unix_ms", "iso8601"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FLOAT32_MAX = 3.4028234663852886e38
_PRICE = re.compile(r"[$€£¥]?\s*(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?")
_MS_HINT_ABOVE = 1e11  # Unix seconds this large are in the year 5138: surely milliseconds

T = TypeVar("T")


class RowError(ValueError):
    """This row cannot become a canonical row; `reason` is the reject reason code."""

    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.field = field
        self.detail = detail


class Dataset(Protocol):
    """How one source's catalog rows and interaction rows map to canonical values."""

    name: str  # the dataset.name that selects it (tasks.datasets)
    item_type: str  # how prompts name one item: "movie", "beauty product", ...

    @classmethod
    def from_config(cls, config: DatasetConfig) -> Dataset:
        """The mapping the settings describe (its own [dataset.*] section)."""
        ...

    def map_item(self, fields: Mapping[str, object]) -> dict[str, object]:
        """Canonical item values (keys CATALOG_FIELDS) of a parsed row; may raise RowError."""
        ...

    def map_interaction(self, fields: Mapping[str, object]) -> dict[str, object]:
        """Canonical interaction values (keys INTERACTION_FIELDS); may raise RowError."""
        ...


# --- parsers ----------------------------------------------------------------------------------


def to_id(value: object) -> str | None:
    """An identifier as text; numbers from typed files (Parquet int columns) become digits."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return str(value)


def to_text(value: object) -> str | None:
    """A scalar or list value as one string (lists joined with ", ", dicts as JSON)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    if isinstance(value, list | tuple):
        parts = (to_text(v) for v in value)
        return ", ".join(p.strip() for p in parts if p is not None and p.strip())
    return str(value)


def join_paragraphs(value: object) -> str | None:
    """A text field that sources may split into a list of paragraphs, joined with spaces."""
    if isinstance(value, list | tuple):
        parts = (to_text(v) for v in value)
        return " ".join(p.strip() for p in parts if p is not None and p.strip())
    return to_text(value)


def to_str_list(value: object, separator: str | None = None) -> list[str] | None:
    """A list field: a list as is, a string split on `separator` (or kept whole without one)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.split(separator) if separator else [value]
    if isinstance(value, list | tuple):
        return [text for text in (to_text(v) for v in value) if text is not None]
    text = to_text(value)
    return None if text is None else [text]


def parse_price(value: object) -> float:
    """A non-negative price from a number or text such as "$1,299.00"; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a price: {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        match = _PRICE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"not a price: {value!r}")
        number = float(match.group(1).replace(",", "") + (match.group(2) or ""))
    else:
        raise ValueError(f"not a price: {value!r}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"not a price: {value!r}")
    return number


def parse_year(value: object) -> int:
    """A calendar year (1..9999) from an int or a string of digits; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a year: {value!r}")
    if isinstance(value, int):
        year = value
    elif isinstance(value, float) and value.is_integer():
        year = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        year = int(value.strip())
    else:
        raise ValueError(f"not a year: {value!r}")
    if not 1 <= year <= 9999:
        raise ValueError(f"not a year: {value!r}")
    return year


def typed_or_keep(
    name: str, value: object, parse: Callable[[object], T], attributes: dict[str, str]
) -> T | None:
    """Parse a typed field; if it does not parse, keep its text in `attributes[name]`.

    Should `name` already be taken by a source column of that name, the text goes to
    `<name>_unparsed` so that neither value is lost.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return parse(value)
    except ValueError:
        text = to_text(value)
        if text is not None and text.strip():
            attributes[f"{name}_unparsed" if name in attributes else name] = text
        return None


def parse_rating(value: object) -> float | None:
    """A rating as float; None when absent or blank; RowError(bad_rating) when not a number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RowError("bad_rating", "rating", f"rating {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise RowError("bad_rating", "rating", f"rating {value!r} is not a number") from None
    if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
        raise RowError("bad_rating", "rating", f"rating {value!r} is not a finite number")
    return number


def parse_timestamp(value: object, fmt: TimestampFormat = "auto") -> datetime:
    """An aware UTC datetime; RowError(bad_timestamp) when the value does not fit `fmt`.

    Datetime values (typed Parquet columns) are taken as they are whatever `fmt` says; naive ones
    are UTC. "auto": numbers and numeric strings are Unix seconds, other strings ISO 8601.
    The 1970..2100 range is checked by ingest, not here.
    """
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError("bad_timestamp", "timestamp", "timestamp is missing")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RowError("bad_timestamp", "timestamp", f"timestamp {value!r} is not a time")
    number = _as_number(value)
    if fmt == "iso8601" or (fmt == "auto" and number is None):
        return _parse_iso(value)
    if number is None:
        raise RowError("bad_timestamp", "timestamp", f"timestamp {value!r} is not a number")
    seconds = number / 1000 if fmt == "unix_ms" else number
    try:
        return _EPOCH + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        hint = ""
        if fmt != "unix_ms" and abs(number) > _MS_HINT_ABOVE:
            hint = " (milliseconds? set timestamp_format = 'unix_ms')"
        raise RowError(
            "bad_timestamp", "timestamp", f"timestamp {value!r} is out of range{hint}"
        ) from None


def _as_number(value: int | float | str) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value.strip())
    except ValueError:
        return None


def _parse_iso(value: object) -> datetime:
    if not isinstance(value, str):
        raise RowError("bad_timestamp", "timestamp", f"timestamp {value!r} is not ISO 8601 text")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise RowError(
            "bad_timestamp", "timestamp", f"timestamp {value!r} is not ISO 8601 or Unix seconds"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
