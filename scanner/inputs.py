"""Reading what a user hands in, the same way everywhere: names that become paths, paths that
must stay inside a folder, and text (prompt and caption files, CSV/Parquet tables, name lists)
in a known encoding. Every refusal is one line naming the file (docs/SECURITY.md)."""

from __future__ import annotations

import codecs
import io
from pathlib import Path

from scanner.errors import input_error

DEFAULT_ENCODING = "utf-8"


def plain_name(name: str, what: str) -> str:
    """``name`` if it can only ever mean one entry inside its root folder: '.', '..', absolute
    names and names with a path separator are refused before anything is written or deleted."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute():
        raise input_error(name or "''", f"{what} must be a plain name (no '/', '\\', '.' or '..'), not a path")
    return name


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink resolved, lies strictly inside ``root``."""
    return Path(root).resolve() in Path(path).resolve().parents


def decode_text(data: bytes, where: object, encoding: str | None = None) -> str:
    """``data`` as text in ``encoding`` (UTF-8 by default; a UTF-8 byte-order mark is dropped).
    Bytes that do not decode are an error naming ``where`` and the byte offset: text is never
    guessed, replaced, or kept as ``b'...'``."""
    encoding = encoding or DEFAULT_ENCODING
    try:
        utf8 = codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        raise input_error(where, f"unknown text encoding '{encoding}'") from None
    skip = len(codecs.BOM_UTF8) if utf8 and data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode(encoding)
    except UnicodeDecodeError as error:
        offset = skip + error.start
        raise input_error(where, f"not {encoding} text: byte 0x{data[offset]:02x} at byte offset {offset} cannot be "
                                 "decoded; give the file's encoding with --encoding") from None


def read_text(path: Path, encoding: str | None = None) -> str:
    """A whole text file, decoded by ``decode_text``."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise input_error(path, f"cannot read ({error.strerror or error})") from None
    return decode_text(data, path, encoding)


def read_table(path: Path, encoding: str | None = None):
    """A ``.parquet`` or ``.csv`` file as an Arrow table. CSV bytes are decoded as text first:
    pyarrow would keep a column it cannot read as UTF-8 as raw bytes."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    kind = path.suffix[1:].upper()
    try:
        if kind == "PARQUET":
            return pq.read_table(path)
        return pacsv.read_csv(io.BytesIO(read_text(path, encoding).encode("utf-8")))
    except (pa.ArrowInvalid, OSError) as error:
        raise input_error(path, f"cannot read as {kind} ({str(error).splitlines()[0]})") from None


def text_column(table, column: str, flag: str, path: Path, encoding: str | None = None) -> list[str]:
    """A table column as text: missing values are '', a binary column is decoded (an error names
    the row), numbers are written out."""
    if column not in table.column_names:
        raise input_error(path, f"no column '{column}' (columns: {', '.join(table.column_names)}); choose one with {flag}")
    return [_as_text(value, f"{path}: row {row}, column '{column}'", encoding)
            for row, value in enumerate(table.column(column).to_pylist())]


def _as_text(value: object, where: str, encoding: str | None) -> str:
    if value is None:
        return ""
    return decode_text(value, where, encoding) if isinstance(value, bytes) else str(value)
