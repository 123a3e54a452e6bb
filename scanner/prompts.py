"""Reading prompts: a text file (one per line), or CSV / Parquet with a caption column."""

from __future__ import annotations

from pathlib import Path

from scanner.errors import MemscanError, input_error
from scanner.generate import Prompt
from scanner.inputs import read_table, read_text, text_column


def read_prompts(path: str | Path, caption_column: str = "caption", encoding: str | None = None) -> list[Prompt]:
    """Distinct prompts in file order; blank lines and repeated prompts are dropped. Text is
    UTF-8 (with or without a byte-order mark) unless ``encoding`` names another."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "no such prompts file")
    if path.suffix.lower() in (".csv", ".parquet"):
        texts = text_column(read_table(path, encoding), caption_column, "--caption-column", path, encoding)
    else:
        texts = read_text(path, encoding).splitlines()
    seen: dict[str, Prompt] = {}
    for text in texts:
        text = text.strip()
        if text and text not in seen:
            seen[text] = Prompt.from_text(text, source=str(path))
    if not seen:
        raise input_error(path, "no prompts in file")
    return list(seen.values())


def scan_prompts(prompts_path: str | Path | None = None, caption_column: str = "caption", encoding: str | None = None,
                 prompts_from_index: str | None = None, top: int = 100, index_root: str | Path = "indexes") -> list[Prompt]:
    """The prompts ``memscan scan`` samples: the ``top`` most duplicated captions of the index
    ``prompts_from_index`` (under ``index_root``), else those of the file ``prompts_path``, else
    the demo captions. An empty choice is refused: nothing to sample would read as "no
    memorization candidates"."""
    if prompts_from_index:
        from scanner.config import require_int
        from scanner.index import TrainingIndex, captions_to_sample

        require_int("--top", top, 1)
        source_index = TrainingIndex.open(prompts_from_index, Path(index_root))
        prompts = [Prompt.from_text(caption, source=f"index:{source_index.name}", source_item_id=item_id)
                   for caption, item_id in captions_to_sample(source_index, top)]
    elif prompts_path:
        prompts = read_prompts(prompts_path, caption_column, encoding)
    else:
        from scanner import demo as demo_world

        prompts = [Prompt.from_text(r["caption"], source="demo", source_item_id=r["item_id"])
                   for r in demo_world.demo_items()]
    if not prompts:
        raise MemscanError(f"no prompts to sample{f' in index {prompts_from_index}' if prompts_from_index else ''}")
    return prompts
