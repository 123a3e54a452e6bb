"""Reading prompts: a text file (one per line), or CSV / Parquet with a caption column."""

from __future__ import annotations

from pathlib import Path

from scanner.errors import input_error
from scanner.generate import Prompt


def read_prompts(path: str | Path, caption_column: str = "caption") -> list[Prompt]:
    """Distinct prompts in file order; blank lines and repeated prompts are dropped."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "no such prompts file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        texts = _read_table_column(path, caption_column)
    else:
        try:
            texts = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise input_error(path, "not a UTF-8 text file; give one prompt per line, or a .csv/.parquet "
                                    "with --caption-column") from None
    seen: dict[str, Prompt] = {}
    for text in texts:
        text = (text or "").strip()
        if text and text not in seen:
            seen[text] = Prompt.from_text(text, source=str(path))
    if not seen:
        raise input_error(path, "no prompts in file")
    return list(seen.values())


def _read_table_column(path: Path, column: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path) if path.suffix.lower() == ".parquet" else pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise input_error(path, f"cannot read as {path.suffix[1:].upper()} ({str(error).splitlines()[0]})") from None
    if column not in table.column_names:
        raise input_error(path, f"no column '{column}' (columns: {', '.join(table.column_names)}); "
                                "choose one with --caption-column")
    return [str(v) if v is not None else "" for v in table.column(column).to_pylist()]
