"""Rich progress bars, shown only on an interactive terminal so logs and CI output stay clean."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
console = Console(stderr=True)
LOG_AFTER_S = 10.0


def track(items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
    if not sys.stderr.isatty():  # logs get one line per loop that took a while, not a bar
        start = time.monotonic()
        yield from items
        if (elapsed := time.monotonic() - start) >= LOG_AFTER_S:
            print(f"  {label}: {elapsed:.0f} s", file=sys.stderr, flush=True)
        return
    columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield from progress.track(items, total=total, description=label)
