"""Progress bars with throughput and ETA, silent when output is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(label: str, total: int, enabled: bool = True, unit: str = "images") -> Iterator[Callable[..., None]]:
    """Yields ``advance(n, skip=False)``; skipped work (already stored) does not count in the rate."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda n, skip=False: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(label, total=total, rate="")
        state = {"skipped": 0}

        def advance(n: int, skip: bool = False) -> None:
            if skip:
                state["skipped"] += n
            progress.advance(task, n)
            elapsed = progress.tasks[task].elapsed or 0.0
            done = progress.tasks[task].completed - state["skipped"]
            if elapsed > 0 and done > 0:
                progress.update(task, rate=f"{done / elapsed:.1f} {unit}/s")

        yield advance
