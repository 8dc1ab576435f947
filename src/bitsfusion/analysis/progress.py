"""``cell_progress``: a transient rich progress bar with ETA for long per-cell loops (or nothing)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

__all__ = ["cell_progress"]


@contextlib.contextmanager
def cell_progress(enabled: bool, total: int, title: str) -> Iterator[Callable[..., None]]:
    """Yield ``advance(label, steps=1)``: steps done, ``label`` naming what runs next; ETA from the pace so far."""
    if not enabled or total <= 0:
        yield lambda label, steps=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.description}"), transient=True)
    with bar:
        task = bar.add_task("", total=total)
        yield lambda label, steps=1: bar.update(task, advance=steps, description=label)
