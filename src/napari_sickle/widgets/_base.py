"""Shared machinery for the dock widgets: run core work off the UI thread with
progress, Cancel, warnings shown to the user, and Run enabled only for valid inputs.

Core functions take a ``progress(stage, done, total)`` callback. ``TaskWidget.start``
runs such a function in a napari ``thread_worker``; the callback forwards progress to the
UI thread through a Qt signal (the widget's bar and a ``napari.utils.progress`` bar in the
activity dock) and raises :class:`~napari_sickle._progress.Cancelled` once the user pressed
Cancel, so the work stops at its next progress report and nothing is added to the viewer.
Python warnings raised by the work become napari notifications.
"""

import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Optional

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


#: open analysis widgets, so the training widget can hand them a checkpoint
LIVE_WIDGETS: "weakref.WeakSet" = weakref.WeakSet()


def same_viewer(a, b) -> bool:
    """True when ``a`` and ``b`` are the same viewer (napari may hand plugins a proxy)."""
    return getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


def notify(message: str, level: str = "warning") -> None:
    """A napari notification (warning / info / error); silent outside napari."""
    try:
        from napari.utils import notifications

        getattr(notifications, f"show_{level}")(message)
    except Exception:  # pragma: no cover
        pass


def _capture_warnings(func):
    """Run ``func`` recording its UserWarnings; returns (result, [messages])."""

    def wrapped(**kwargs):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", UserWarning)
            result = func(**kwargs)
        msgs = []
        for w in seen:
            if issubclass(w.category, UserWarning) and not issubclass(w.category, (DeprecationWarning, FutureWarning)):
                m = str(w.message)
                if m not in msgs:
                    msgs.append(m)
        return result, msgs

    return wrapped


class TaskWidget(Container):
    """A Container with Run / Cancel buttons, a progress bar and a status line.

    Subclasses add their controls, then call ``self._add_run_controls()`` and, in their
    run handler, ``self.start(func, kwargs, on_returned)``. ``problem()`` returns why the
    current inputs cannot run ('' when they can); ``update_run_state()`` (connect it to
    input changes) greys out Run and says why.
    """

    #: name shown to users (status lines, the training widget's hand-over message)
    display_name = "napari-sickle"

    def __init__(self, viewer, **kwargs):
        super().__init__(**kwargs)
        guard_llvm_clash()
        self._viewer = viewer
        self._worker = None
        self._nprogress = None
        self._cancel_event = threading.Event()
        self._bridge = _Bridge()
        self._bridge.progress.connect(self._on_progress)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress_bar = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="Ready.")
        self.status.native.setWordWrap(True)
        self.cancel_button.changed.connect(self.cancel)
        #: last error seen by a worker, for tests and the status line
        self.last_error: Optional[BaseException] = None
        #: warnings of the last run (also shown as napari notifications)
        self.last_warnings: list = []

    def _add_run_controls(self):
        self.extend([self.run_button, self.cancel_button, self.progress_bar, self.status])

    # -- input validation -----------------------------------------------------------
    def problem(self) -> str:
        """Why the current inputs cannot run ('' when they can). Subclasses override."""
        return ""

    def update_run_state(self, *_):
        """Enable Run only for valid inputs; the status line says what is missing."""
        if self.busy:
            return
        why = self.problem()
        self.run_button.enabled = not why
        if why:
            self.status.value = why
        elif self.status.value.startswith(("Choose", "Select", "Tick", "Checkpoint file not found", "Only")):
            self.status.value = "Ready."

    # -- running -------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def start(
        self,
        func: Callable[..., Any],
        kwargs: dict,
        on_returned: Callable[[Any], None],
        on_finished: Optional[Callable[[], None]] = None,
    ):
        """Run ``func(**kwargs, progress=cb)`` in a worker thread."""
        from napari.qt.threading import create_worker

        if self._worker is not None:
            self.status.value = "Already running; press Cancel first."
            return None
        why = self.problem()
        if why:
            self.status.value = why
            self.run_button.enabled = False
            return None
        self._cancel_event.clear()
        self.last_error = None
        self.last_warnings = []
        self._reset_progress()
        cancel = self._cancel_event
        bridge = self._bridge

        def cb(stage: str, done: int, total: int) -> None:
            if cancel.is_set():
                raise Cancelled()
            bridge.progress.emit(str(stage), int(done), int(total))

        worker = create_worker(
            _capture_warnings(func), **kwargs, progress=cb, _start_thread=False, _ignore_errors=True
        )  # errors go to _on_error

        def _returned(packed):
            result, msgs = packed
            if cancel.is_set():
                self.status.value = "Cancelled; nothing was changed."
                return
            self.last_warnings = msgs
            for m in msgs:
                notify(m, "warning")
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

    # -- progress (UI thread) ---------------------------------------------------------
    def _reset_progress(self):
        """Start a run from an empty bar, here and in napari's activity dock."""
        self.progress_bar.max = 1
        self.progress_bar.value = 0
        self._close_nprogress()
        try:
            from napari.utils import progress

            self._nprogress = progress(total=0, desc=f"{self.display_name}: starting")
        except Exception:  # pragma: no cover
            self._nprogress = None

    def _close_nprogress(self):
        if self._nprogress is not None:
            try:
                self._nprogress.close()
            except Exception:  # pragma: no cover
                pass
            self._nprogress = None

    def _on_progress(self, stage: str, done: int, total: int):
        self.progress_bar.max = max(int(total), 1)
        self.progress_bar.value = min(int(done), self.progress_bar.max)
        self.status.value = f"{stage}: {done}/{total}"
        p = self._nprogress
        if p is not None:
            try:
                if p.total != max(int(total), 1):
                    p.total = max(int(total), 1)
                p.set_description(f"{self.display_name}: {stage}")
                p.n = min(int(done), p.total)
                p.refresh()
            except Exception:  # pragma: no cover
                pass

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
        self._close_nprogress()
        self.cancel_button.enabled = False
        self.run_button.enabled = True
        why = self.problem()
        if why:
            self.run_button.enabled = False
