"""Labelled sets for membership inference: images read from a folder, table or tar shards, or
the demo world's, each marked member or non-member (``mia eval``, ``mia score``, ``mia dataset``).

The membership modules (models, attacks) are imported only where they are needed, so that a bad
file is refused before anything heavy loads."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from scanner.errors import MemscanError, input_error
from scanner.sources import SourceFormat


def labelled_items(source: Path, member: bool, source_format: SourceFormat) -> list:
    """Every image of ``source`` as a ``LabelledItem`` marked ``member``; an unreadable image or
    a source with no images is refused, naming the file."""
    from scanner.index import read_chunks
    from scanner.mia.evaluate import LabelledItem
    from scanner.sources import iter_source

    items = []
    for chunk in read_chunks(iter_source(source, source_format), skip=set(), size=256):
        for item in chunk:
            image, problem = item.decoded()
            if image is None:
                raise input_error(item.source_path, problem)
            items.append(LabelledItem(item.key, item.caption, image, member))
    if not items:
        raise input_error(source, "no images")
    return items


def demo_labelled(rows: Iterable[dict]) -> list:
    """Demo world rows (``scanner.demo.membership_items()`` and the like) as ``LabelledItem``s:
    a member is an item trained on at least once, its bucket its duplication count."""
    from scanner import demo as demo_world
    from scanner.mia.evaluate import LabelledItem

    return [LabelledItem(r["item_id"], r["caption"], demo_world.decode_png(r["image_png"]), r["dup_count"] > 0,
                         demo_world.bucket_of(r["dup_count"])) for r in rows]


def labelled_sets(positive: Path | None, negative: Path | None, flags: tuple[str, str],
                  demo_rows: Callable[[], Iterable[dict]], source_format: SourceFormat, halves: bool = False) -> list:
    """Items labelled member (``positive``) and non-member (``negative``), or the demo's sets when
    neither is given. ``flags`` name the two options in errors. With ``halves`` (a command that
    splits each set in two) a set too small to split is refused here, before any model loads."""
    if (positive is None) != (negative is None):
        raise MemscanError(f"give both {flags[0]} and {flags[1]}, or neither (the demo sets)")
    if positive is None:
        return demo_labelled(demo_rows())
    sets = [(positive, labelled_items(positive, True, source_format)),
            (negative, labelled_items(negative, False, source_format))]
    for source, items in sets:
        if halves and len(items) < 2:
            raise input_error(source, f"{len(items)} image; at least 2 are needed to split the set into two halves")
    first, second = distinct_ids([(flags[0].lstrip("-"), sets[0][1]), (flags[1].lstrip("-"), sets[1][1])])
    return first + second


def distinct_ids(groups: Sequence[tuple[str, list]]) -> list[list]:
    """Each group's items, an id that another group also uses prefixed with its group's name
    ("members:0.png"): two folders of 0.png, 1.png... would otherwise share rows in the database."""
    owners = Counter(item_id for _, items in groups for item_id in {item.item_id for item in items})
    return [[dataclasses.replace(item, item_id=f"{name}:{item.item_id}") if owners[item.item_id] > 1 else item
             for item in items] for name, items in groups]
