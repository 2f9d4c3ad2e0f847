"""Plain-Python progress and cancellation, shared by analysis and training.

Long functions take ``progress: ProgressCallback | None``. They call it as
``progress(stage, done, total)``; a callback may raise :class:`Cancelled` to stop
the work cleanly (the widgets do this when the user presses Cancel).
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressCallback = Callable[[str, int, int], None]


class Cancelled(Exception):
    """Raised inside long work when the user asked to stop."""


def report(progress: Optional[ProgressCallback], stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)
