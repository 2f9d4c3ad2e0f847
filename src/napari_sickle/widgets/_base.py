"""Shared machinery for the dock widgets: run core work off the UI thread with
progress and Cancel.

Core functions take a ``progress(stage, done, total)`` callback. ``TaskWidget.start``
runs such a function in a napari ``thread_worker``; the callback forwards progress to the
UI thread through a Qt signal and raises :class:`~napari_sickle._progress.Cancelled`
once the user pressed Cancel, so the work stops at its next progress report and nothing
is added to the viewer.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from qtpy.QtCore import QObject, Signal

from .._progress import Cancelled


def guard_llvm_clash() -> bool:
    """Keep torch from importing triton inside a viewer that renders with Mesa's llvmpipe.

    Mesa's software OpenGL (used under Xvfb, remote desktops and VMs) and triton both load
    their own LLVM; importing triton after the viewer made its GL context segfaults the whole
    napari process (torch imports it lazily at the first optimizer step). When a Mesa LLVM
    is already mapped and triton is not loaded yet, mark triton as unavailable: torch then
    runs without it (napari-sickle never uses torch.compile). Returns True when applied.
    """
    import sys

    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/maps") as fh:
            maps = fh.read()
    except OSError:
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None  # `import triton` now raises ImportError
    return True


class _Bridge(QObject):
    progress = Signal(str, int, int)


class TaskWidget(Container):
    """A Container with Run / Cancel buttons, a progress bar and a status line.

    Subclasses add their controls, then call ``self._add_run_controls()`` and, in their
    run handler, ``self.start(func, kwargs, on_returned)``.
    """

    def __init__(self, viewer, **kwargs):
        super().__init__(**kwargs)
        guard_llvm_clash()
        self._viewer = viewer
        self._worker = None
        self._cancel_event = threading.Event()
        self._bridge = _Bridge()
        self._bridge.progress.connect(self._on_progress)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress_bar = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="Ready.")
        self.cancel_button.changed.connect(self.cancel)
        #: last error seen by a worker, for tests and the status line
        self.last_error: BaseException | None = None

    def _add_run_controls(self):
        self.extend([self.run_button, self.cancel_button, self.progress_bar, self.status])

    # -- running -------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def start(
        self,
        func: Callable[..., Any],
        kwargs: dict,
        on_returned: Callable[[Any], None],
        on_finished: Callable[[], None] | None = None,
    ):
        """Run ``func(**kwargs, progress=cb)`` in a worker thread."""
        from napari.qt.threading import create_worker

        if self._worker is not None:
            self.status.value = "Already running; press Cancel first."
            return None
        self._cancel_event.clear()
        self.last_error = None
        cancel = self._cancel_event
        bridge = self._bridge

        def cb(stage: str, done: int, total: int) -> None:
            if cancel.is_set():
                raise Cancelled()
            bridge.progress.emit(str(stage), int(done), int(total))

        worker = create_worker(func, **kwargs, progress=cb, _start_thread=False, _ignore_errors=True)  # errors go to _on_error

        def _returned(result):
            if cancel.is_set():
                self.status.value = "Cancelled; nothing was changed."
                return
            try:
                on_returned(result)
            except Exception as exc:  # pragma: no cover - shown to the user
                self._on_error(exc)

        worker.returned.connect(_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        if on_finished is not None:
            worker.finished.connect(on_finished)
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "Running…"
        worker.start()
        return worker

    def cancel(self, *_):
        if self._worker is not None:
            self._cancel_event.set()
            self.status.value = "Cancelling…"

    # -- callbacks (UI thread) -------------------------------------------------------
    def _on_progress(self, stage: str, done: int, total: int):
        self.progress_bar.max = max(int(total), 1)
        self.progress_bar.value = min(int(done), self.progress_bar.max)
        self.status.value = f"{stage}: {done}/{total}"

    def _on_error(self, exc: BaseException):
        if isinstance(exc, Cancelled):
            self.status.value = "Cancelled; nothing was changed."
            return
        self.last_error = exc
        self.status.value = f"Error: {exc}"
        try:
            from napari.utils.notifications import show_error

            show_error(f"{type(exc).__name__}: {exc}")
        except Exception:  # pragma: no cover
            pass

    def _on_finished(self):
        self._worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
