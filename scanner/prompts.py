"""Reading prompts: a text file (one per line), or CSV / Parquet with a caption column."""

from __future__ import annotations

from pathlib import Path

from scanner.errors import input_error
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
