"""Reading training sets: image folders with sidecar captions, Parquet/CSV tables of
(image path, caption), and WebDataset / img2dataset tar shards.

Each reader yields ``SourceItem`` records whose image bytes are read lazily; decoding (and
skipping what cannot be decoded) is the index builder's job, so one corrupt file never
aborts a build. Captions are text in one encoding (``inputs.decode_text``). What a reader may
touch: a folder source only files inside it (a symlink out is skipped); a tar shard only its
own members (nothing is extracted); a table any path its writer gave, unless ``image_root``
confines it (a table from someone else).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scanner.errors import input_error
from scanner.inputs import decode_text, inside, read_table, read_text, text_column

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class SourceItem:
    key: str                      # unique within the source: relative path without suffix, or shard/key
    source_path: str              # where the image came from, for the evidence trail
    caption: str
    read_bytes: Callable[[], bytes]


@dataclass(frozen=True)
class SourceFormat:
    """How to read a source: a table's columns, the captions' text encoding (None: UTF-8), and
    the folder every image path of a table must resolve under (None: anywhere)."""

    image_column: str = "image_path"
    caption_column: str = "caption"
    encoding: str | None = None
    image_root: Path | None = None


def iter_source(source: Path, source_format: SourceFormat = SourceFormat()) -> Iterator[SourceItem]:
    """The items of a training-set source, whatever its kind."""
    if not source.exists():
        raise input_error(source, "no such source; expected an image folder, a .parquet/.csv table or .tar shards")
    if source.is_dir():
        shards = sorted(source.glob("*.tar"))
        yield from (_iter_shards(shards, source, source_format.encoding) if shards
                    else _iter_folder(source, source_format.encoding))
    elif source.suffix == ".tar":
        yield from _iter_shards([source], source.parent, source_format.encoding)
    elif source.suffix.lower() in (".parquet", ".csv"):
        yield from _iter_table(source, source_format)
    else:
        raise input_error(source, "unknown source kind; expected an image folder, a .parquet/.csv table or .tar shards")


def _iter_folder(folder: Path, encoding: str | None) -> Iterator[SourceItem]:
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        sidecar = path.with_suffix(".txt")
        key = str(path.relative_to(folder).with_suffix(""))
        if not (inside(path, folder) and (not sidecar.exists() or inside(sidecar, folder))):
            yield SourceItem(key, str(path), "", _refuse_link)  # listed as skipped, never read
            continue
        caption = read_text(sidecar, encoding).strip() if sidecar.is_file() else ""
        yield SourceItem(key, str(path), caption, path.read_bytes)


def _refuse_link() -> bytes:
    raise OSError("a symlink to outside the source folder")


def _iter_table(table_path: Path, source_format: SourceFormat) -> Iterator[SourceItem]:
    """Rows of (image path, caption). Relative paths are relative to the table's folder; absolute
    ones are taken as they are, unless ``image_root`` is set: then every path must resolve under it."""
    table = read_table(table_path, source_format.encoding)
    images = text_column(table, source_format.image_column, "--image-column", table_path, source_format.encoding)
    captions = text_column(table, source_format.caption_column, "--caption-column", table_path, source_format.encoding)
    root = source_format.image_root
    for row, (image, caption) in enumerate(zip(images, captions)):
        path = (table_path.parent / image).resolve()
        if root is not None and not inside(path, root):
            raise input_error(table_path, f"row {row}: image path '{image}' is outside --image-root {root}")
        yield SourceItem(str(Path(image).with_suffix("")), str(path), caption, path.read_bytes)


def _iter_shards(shards: list[Path], root: Path, encoding: str | None) -> Iterator[SourceItem]:
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
            caption = decode_text(parts.get(".txt", b""), f"{shard}::{key}.txt", encoding).strip()
            if not caption and ".json" in parts:
                try:
                    caption = str(json.loads(decode_text(parts[".json"], f"{shard}::{key}.json", encoding)).get("caption") or "")
                except (json.JSONDecodeError, AttributeError):
                    caption = ""
            yield SourceItem(f"{shard.relative_to(root).with_suffix('')}/{key}", f"{shard}::{key}", caption,
                             lambda data=image_part: data)
