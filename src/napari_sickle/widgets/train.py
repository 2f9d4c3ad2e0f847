"""Training dock widget: runs ``python -m napari_sickle.train ... --json-progress`` in a
subprocess (so all memory, GPU memory included, is released when training ends), plots
loss and validation metric live, can Stop (the last good checkpoint stays: trainers write
``last.pt``/``best.pt`` atomically after every epoch) and Resume, and loads the trained
model into the open analysis widgets.
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import napari
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    LineEdit,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QProcess, QProcessEnvironment, QTimer

from ..constants import DEVICES
from ._base import LIVE_WIDGETS, TaskWidget, notify, same_viewer
from ._display import fmt

KINDS = ("multilabel", "detector", "bm", "unet")
SOURCES = ("folder or CSV", "simulated", "viewer layers")


def _measured(v) -> bool:
    """A real metric value (trainers report None, or -1 before the first validation)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v != -1


def _parse_options(text: str) -> list[str]:
    import shlex

    args = []
    for item in shlex.split(text or ""):
        if "=" not in item:
            raise ValueError(f"Option {item!r} is not KEY=VALUE.")
        args += ["-o", item]
    return args


def check_recipe(kind: str, options: list[str], **common) -> None:
    """Build the kind's training recipe from ``-o KEY=VALUE`` arguments and the common flags
    as the training command does, so an unknown or malformed option is refused (with the
    valid ones) before a process starts."""
    from ..training.recipes import parse_option, recipe_kwargs

    opts = dict(parse_option(text) for flag, text in zip(options[::2], options[1::2]) if flag == "-o")
    recipe_kwargs(kind, {**common, **opts})


class TrainWidget(TaskWidget):
    """Train detector / multilabel / bm / unet models from the viewer."""

    display_name = "Train models"

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer, labels=True)
        self.kind = ComboBox(choices=KINDS, value="multilabel", label="model kind")
        self.source = ComboBox(choices=SOURCES, value="folder or CSV", label="data")
        self.data_path = FileEdit(
            mode="d",
            label="folder / CSV",
            tooltip=("class folders of crops, a multi-label CSV, images/+masks/ pairs, or a Pascal VOC folder"),
        )
        self.image_layer = ComboBox(choices=self._image_layers, label="image layer", nullable=True)
        self.annotation_layer = ComboBox(
            choices=self._annotation_layers,
            label="annotations",
            nullable=True,
            tooltip="a Labels layer (cell masks) or a Shapes layer of boxes with type/class features",
        )
        self.out_dir = FileEdit(
            mode="d", label="output folder", tooltip="best.pt and last.pt go here; empty = a new folder in the cache"
        )
        self.backbone = LineEdit(value="", label="backbone", tooltip="empty = the trainer's default")
        self.epochs = SpinBox(value=10, min=1, max=10000, label="epochs")
        self.device = ComboBox(choices=DEVICES, value="auto", label="device")
        self.threads = SpinBox(value=0, min=0, max=256, label="CPU threads", tooltip="0 = library default")
        self.extra_options = LineEdit(
            value="", label="options", tooltip="extra trainer options KEY=VALUE, space separated"
        )
        self.resume_button = PushButton(text="Resume", enabled=False)
        self.load_button = PushButton(text="Load into analysis widgets", enabled=False)
        self.run_button.text = "Train"
        self.cancel_button.text = "Stop"
        self.extend(
            [
                self.kind,
                self.source,
                self.data_path,
                self.image_layer,
                self.annotation_layer,
                self.out_dir,
                self.backbone,
                self.epochs,
                self.device,
                self.threads,
                self.extra_options,
            ]
        )
        self._add_run_controls()
        self.extend([Container(widgets=[self.resume_button, self.load_button], layout="horizontal", labels=False)])
        self._proc = None
        self._buffer = ""
        self._stderr = ""
        self._stopping = False
        self._tmpdirs = []
        self.history = []  # epoch events of the current run (and the runs it resumed)
        self.events = []  # every JSON event seen, for inspection
        self.run_dir = None
        self.checkpoint = None  # best.pt of the last run
        self.result = None  # the "done" event
        self.returncode = None
        self._make_plot()

        self.source.changed.connect(self._update_visibility)
        for w in (self.source, self.data_path, self.image_layer, self.annotation_layer):
            w.changed.connect(self.update_run_state)
        self.run_button.changed.connect(lambda *_: self.train())
        self.resume_button.changed.connect(lambda *_: self.train(resume=True))
        self.load_button.changed.connect(lambda *_: self.load_into_analysis())
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(lambda *_: (self.reset_choices(), self.update_run_state()))
        self._update_visibility()
        self.update_run_state()

    @property
    def busy(self) -> bool:
        return self.running

    def problem(self) -> str:
        if self.source.value == "folder or CSV" and str(self.data_path.value or "") in ("", "."):
            return "Choose a data folder or CSV table (or data: simulated / viewer layers)."
        if self.source.value == "viewer layers" and (
            self.image_layer.value is None or self.annotation_layer.value is None
        ):
            return "Choose an image layer and a Labels or Shapes layer of annotations."
        return ""

    # -- controls --------------------------------------------------------------------
    def _image_layers(self, *_):
        return [lay for lay in self._viewer.layers if isinstance(lay, napari.layers.Image)]

    def _annotation_layers(self, *_):
        return [lay for lay in self._viewer.layers if isinstance(lay, (napari.layers.Labels, napari.layers.Shapes))]

    def _update_visibility(self, *_):
        viewer_src = self.source.value == "viewer layers"
        self.data_path.visible = self.source.value == "folder or CSV"
        self.image_layer.visible = viewer_src
        self.annotation_layer.visible = viewer_src

    def _make_plot(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3), tight_layout=True)
        self.ax_loss = self.figure.add_subplot(211)
        self.ax_metric = self.figure.add_subplot(212)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.native.layout().addWidget(self.canvas)
        self._redraw()

    def _redraw(self):
        h = self.history
        ep = [e.get("epoch", i + 1) for i, e in enumerate(h)]
        self.ax_loss.clear()
        self.ax_metric.clear()
        for key, style in (("loss", "-o"), ("val_loss", "--s")):
            pts = [(x, e[key]) for x, e in zip(ep, h) if isinstance(e.get(key), (int, float))]
            if pts:
                self.ax_loss.plot(*zip(*pts), style, ms=3, label=key.replace("_", " "))
        self.ax_loss.set_ylabel("loss")
        if self.ax_loss.lines:
            self.ax_loss.legend(fontsize=7)
        pts = [(x, e["metric"]) for x, e in zip(ep, h) if _measured(e.get("metric"))]
        name = next((e.get("metric_name") for e in reversed(h) if e.get("metric_name")), "metric")
        if pts:
            self.ax_metric.plot(*zip(*pts), "-o", ms=3, color="tab:green")
        self.ax_metric.set_ylabel(str(name))
        self.ax_metric.set_xlabel("epoch")
        self.canvas.draw_idle()

    # -- running ---------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.state() != QProcess.ProcessState.NotRunning

    def _data_argument(self, out: Path) -> str:
        if self.source.value == "simulated":
            return "simulated"
        if self.source.value == "folder or CSV":
            path = str(self.data_path.value or "")
            if path in ("", "."):
                raise ValueError("Choose a data folder or CSV table.")
            return path
        from ..training.export import export_dataset

        image, ann = self.image_layer.value, self.annotation_layer.value
        if image is None or ann is None:
            raise ValueError("Choose an image layer and a Labels or Shapes layer of annotations.")
        tmp = Path(tempfile.mkdtemp(prefix="napari-sickle-data-"))
        self._tmpdirs.append(tmp)
        kw = (
            {"labels": ann.data}
            if isinstance(ann, napari.layers.Labels)
            else {"shapes": list(ann.data), "features": ann.features}
        )
        return str(export_dataset(self.kind.value, image.data, tmp, name=image.name.replace(" ", "_"), **kw))

    def _out_dir(self) -> Path:
        """The chosen output folder, or a new one in the cache (the field is left as it is:
        the status line names the folder once training starts)."""
        value = str(self.out_dir.value or "")
        if value in ("", "."):
            if self.run_dir is not None and self.run_dir.name.startswith(f"{self.kind.value}-"):
                return self.run_dir  # Resume continues the run it stopped
            from .._paths import cache_dir

            return cache_dir() / "runs" / f"{self.kind.value}-{time.strftime('%Y%m%d-%H%M%S')}"
        return Path(value)

    def command(self, resume: bool = False) -> list[str]:
        """The argument list passed to ``python`` (public for reproducibility and tests)."""
        options = _parse_options(self.extra_options.value)
        check_recipe(self.kind.value, options, epochs=self.epochs.value, backbone=self.backbone.value.strip() or None)
        out = self._out_dir()
        args = [
            "-m",
            "napari_sickle.train",
            self.kind.value,
            "--data",
            self._data_argument(out),
            "--out",
            str(out),
            "--epochs",
            str(self.epochs.value),
            "--device",
            self.device.value,
            "--json-progress",
        ]
        if self.backbone.value.strip():
            args += ["--backbone", self.backbone.value.strip()]
        if self.threads.value:
            args += ["--threads", str(self.threads.value)]
        if resume:
            last = out / "last.pt"
            if not last.is_file():
                raise ValueError(f"Nothing to resume: {last} does not exist.")
            args += ["--resume", str(last)]
        return args + options

    def train(self, resume: bool = False):
        """Start (or resume) a training subprocess."""
        if self.running:
            self.status.value = "Already training; press Stop first."
            return
        why = self.problem()
        if why:
            self.status.value = why
            self.run_button.enabled = False
            return
        if not resume and str(self.out_dir.value or "") in ("", "."):
            self.run_dir = None  # a new run gets a new folder
        try:
            args = self.command(resume=resume)
        except Exception as exc:
            self._on_error(exc)
            return
        if not resume:
            self.history = []
        self.events, self.result, self.returncode, self.checkpoint = [], None, None, None
        self._buffer = self._stderr = ""
        self._stopping = False
        self.run_dir = Path(args[args.index("--out") + 1])
        self.last_error = None
        proc = QProcess(self.native)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        proc.setProcessEnvironment(env)
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._proc_finished)
        self._proc = proc
        self.run_button.enabled = self.resume_button.enabled = self.load_button.enabled = False
        self.cancel_button.enabled = True
        self._reset_progress()
        self.status.value = ("Resuming" if resume else "Starting") + f"; checkpoints go to {self.run_dir}"
        proc.start(sys.executable, args)

    def cancel(self, *_):
        """Stop: terminate the training process; the last checkpoint on disk is kept."""
        if not self.running:
            return
        self._stopping = True
        self.status.value = "Stopping…"
        self._proc.terminate()
        proc = self._proc

        def _kill_if_still_running():
            try:
                if proc.state() != QProcess.ProcessState.NotRunning:
                    proc.kill()
            except RuntimeError:  # the widget (and its QProcess) was closed meanwhile
                pass

        QTimer.singleShot(10000, _kill_if_still_running)

    # -- process output (UI thread) --------------------------------------------------
    def _read_stdout(self):
        self._buffer += bytes(self._proc.readAllStandardOutput()).decode("utf-8", "replace")
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.handle_event(event)

    def _read_stderr(self):
        self._stderr = (self._stderr + bytes(self._proc.readAllStandardError()).decode("utf-8", "replace"))[-20000:]

    def handle_event(self, event: dict):
        self.events.append(event)
        kind = event.get("event")
        if kind == "step":
            self._on_progress(event.get("stage", ""), int(event.get("done", 0)), int(event.get("total", 1)))
        elif kind == "epoch":
            self.history.append(event)
            self._redraw()
            msg = f"epoch {fmt(event.get('epoch'))}/{fmt(event.get('epochs'))}"
            if _measured(event.get("loss")):
                msg += f", loss {fmt(event['loss'])}"
            if _measured(event.get("metric")):
                msg += f", {event.get('metric_name', 'metric')} {fmt(event['metric'])}"
            else:
                msg += " (not validated this epoch)"
            self.status.value = msg
        elif kind == "checkpoint":
            self.resume_button.enabled = False
        elif kind == "warning":
            self.status.value = f"Warning: {event.get('message')}"
            notify(f"Train models: {event.get('message')}", "warning")
        elif kind == "done":
            self.result = event
            self.checkpoint = event.get("checkpoint")
        elif kind == "error" and not event.get("stopped"):
            self.last_error = RuntimeError(event.get("message", "training failed"))
            self.status.value = f"Error: {event.get('message')}"

    def _proc_finished(self, code=None, *_):
        self._read_stdout()
        self.returncode = self._proc.exitCode() if code is None else int(code)
        self._close_nprogress()
        self.run_button.enabled = not self.problem()
        self.cancel_button.enabled = False
        best = self.run_dir / "best.pt" if self.run_dir else None
        if best is not None and best.is_file() and self.checkpoint is None:
            self.checkpoint = str(best)
        self.load_button.enabled = self.checkpoint is not None
        self.resume_button.enabled = bool(self.run_dir and (self.run_dir / "last.pt").is_file()) and self.result is None
        if self.result is not None:
            m = self.result.get("metrics") or {}
            shown = ", ".join(f"{k} {fmt(v)}" for k, v in m.items() if _measured(v))
            self.status.value = f"Done in {fmt(round(self.result.get('seconds', 0)))} s. {shown}".strip()
            self._offer_load()
        elif self._stopping:
            self.status.value = "Stopped; the last checkpoint is kept" + (
                " (Resume continues)." if self.resume_button.enabled else "."
            )
        elif self.last_error is None:
            tail = self._stderr.strip().splitlines()[-1:] or [f"exit code {self.returncode}"]
            self.last_error = RuntimeError(tail[0])
            self.status.value = f"Error: {tail[0]}"
        for tmp in self._tmpdirs:
            shutil.rmtree(tmp, ignore_errors=True)
        self._tmpdirs = []

    def _offer_load(self):
        try:
            from napari.utils.notifications import show_info

            show_info(f"Training finished: {self.checkpoint}. Press 'Load into analysis widgets' to use it.")
        except Exception:  # pragma: no cover
            pass

    # -- hand-over to the analysis widgets -------------------------------------------
    def analysis_widgets(self) -> list:
        """The open analysis widgets of this viewer (each has ``set_checkpoint(kind, path)``)."""
        return [
            w
            for w in list(LIVE_WIDGETS)
            if same_viewer(getattr(w, "_viewer", None), self._viewer) and hasattr(w, "set_checkpoint")
        ]

    def load_into_analysis(self, checkpoint=None) -> list:
        """Hand the trained checkpoint to every open analysis widget that takes its kind."""
        ckpt = checkpoint or self.checkpoint
        if not ckpt:
            self.status.value = "No trained model yet."
            return []
        try:
            from ..models.checkpoint import load_checkpoint

            kind = load_checkpoint(ckpt)["kind"]
        except Exception as exc:
            self._on_error(exc)
            return []
        loaded = [w.display_name for w in self.analysis_widgets() if w.set_checkpoint(kind, ckpt)]
        self.status.value = (
            ("Loaded into " + ", ".join(loaded))
            if loaded
            else (f"No open analysis widget takes a {kind!r} model; open one from Plugins › napari-sickle.")
        )
        return loaded
