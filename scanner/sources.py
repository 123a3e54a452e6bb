"""Reading training sets: image folders with sidecar captions, Parquet/CSV tables of
(image path, caption), and WebDataset / img2dataset tar shards.

Each reader yields ``SourceItem`` records whose image bytes are read lazily; decoding (and
skipping what cannot be decoded) is the index builder's job, so one corrupt file never
aborts a build.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scanner.errors import input_error

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class SourceItem:
    key: str                      # unique within the source: relative path without suffix, or shard/key
    source_path: str              # where the image came from, for the evidence trail
    caption: str
    read_bytes: Callable[[], bytes]


def iter_source(source: Path, image_column: str = "image_path", caption_column: str = "caption") -> Iterator[SourceItem]:
    """The items of a training-set source, whatever its kind."""
    if not source.exists():
        raise input_error(source, "no such source; expected an image folder, a .parquet/.csv table or .tar shards")
    if source.is_dir():
        shards = sorted(source.glob("*.tar"))
        yield from (_iter_shards(shards, source) if shards else _iter_folder(source))
    elif source.suffix == ".tar":
        yield from _iter_shards([source], source.parent)
    elif source.suffix.lower() in (".parquet", ".csv"):
        yield from _iter_table(source, image_column, caption_column)
    else:
        raise input_error(source, "unknown source kind; expected an image folder, a .parquet/.csv table or .tar shards")


def _iter_folder(folder: Path) -> Iterator[SourceItem]:
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else ""
        key = str(path.relative_to(folder).with_suffix(""))
        yield SourceItem(key, str(path), caption, path.read_bytes)


def _iter_table(table_path: Path, image_column: str, caption_column: str) -> Iterator[SourceItem]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(table_path) if table_path.suffix.lower() == ".parquet" else pacsv.read_csv(table_path)
    except (pa.ArrowInvalid, OSError) as error:
        raise input_error(table_path, f"cannot read as a table ({str(error).splitlines()[0]})") from None
    for column, flag in ((image_column, "--image-column"), (caption_column, "--caption-column")):
        if column not in table.column_names:
            raise input_error(table_path, f"no column '{column}' (columns: {', '.join(table.column_names)}); choose one with {flag}")
    base = table_path.parent.resolve()
    for row, (image, caption) in enumerate(zip(table.column(image_column).to_pylist(), table.column(caption_column).to_pylist())):
        path = (base / str(image)).resolve()
        if base not in path.parents:
            raise input_error(table_path, f"row {row}: image path '{image}' escapes the folder of the table")
        yield SourceItem(str(Path(str(image)).with_suffix("")), str(path), str(caption or ""), path.read_bytes)


def _iter_shards(shards: list[Path], root: Path) -> Iterator[SourceItem]:
    """WebDataset shards: members grouped by key (the name up to the first dot), an image
    (.jpg/.png/...) plus a caption from .txt or from .json's "caption" field."""
    for shard in shards:
        try:
            with tarfile.open(shard) as archive:
                groups: dict[str, dict[str, bytes]] = {}
                for member in archive:
                    if not member.isfile():
                        continue
                    key, _, extension = member.name.partition(".")
                    handle = archive.extractfile(member)
                    groups.setdefault(key, {})["." + extension.lower()] = handle.read() if handle else b""
        except tarfile.TarError as error:
            raise input_error(shard, f"not a readable tar shard ({error})") from None
        for key, parts in groups.items():
            image_part = next((parts[s] for s in IMAGE_SUFFIXES if s in parts), None)
            if image_part is None:
                continue
            caption = parts.get(".txt", b"").decode("utf-8", errors="replace").strip()
            if not caption and ".json" in parts:
                try:
                    caption = str(json.loads(parts[".json"]).get("caption") or "")
                except (json.JSONDecodeError, AttributeError):
                    caption = ""
            yield SourceItem(f"{shard.relative_to(root).with_suffix('')}/{key}", f"{shard}::{key}", caption,
                             lambda data=image_part: data)
