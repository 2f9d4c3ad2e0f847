"""Dock widget "Compare segmentations": watershed vs U-Net vs connected components.

A thin front end over :func:`napari_sickle.analysis.segmentation.compare_segmentations`;
layers are made in :mod:`napari_sickle.layers.segmentation`. The U-Net is a shipped model
(ticked by default when one is shipped) or a checkpoint from Train models.
"""

from pathlib import Path
from typing import Optional

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    SpinBox,
    Table,
    create_widget,
)

from ..constants import DEVICES
from ._base import LIVE_WIDGETS, TaskWidget
from ._display import fmt, show_table, wrap
from ._models import ModelPicker

#: metrics table rows: (column of ComparisonResult.metrics_table(), row header)
METRIC_ROWS = (
    ("dice", "Dice (foreground)"),
    ("iou", "IoU (foreground)"),
    ("f1_50", "F1 at IoU 0.5 (cells)"),
    ("count", "objects found"),
    ("count_true", "true cells"),
    ("count_error", "count error"),
    ("merges", "merged (2+ cells)"),
    ("splits", "split cells"),
    ("seconds", "seconds"),
)
METHOD_HEADERS = {"watershed": "watershed", "unet": "U-Net", "connected_components": "conn. comp."}

TOOLTIPS = {
    "image": "Bright-field smear to segment (gray, RGB or RGBA; 8/16-bit or float).",
    "ground_truth": "Optional ground truth: a Labels layer (instances or a binary mask).",
    "gt_file": "Or a mask/label image file (binary masks are split into cells by connected components).",
    "threshold": "Global threshold used by watershed and connected components (cells darker than background).",
    "min_distance": "Watershed: minimum distance between cell centres in px (0 = auto from cell size).",
    "min_size": "Smallest object kept, px (0 = auto from cell size).",
    "tile": "U-Net tile size in px at the model's working scale; overlapping tiles are blended.",
    "overlap": "Overlap of neighbouring U-Net tiles in px.",
}


def _run_comparison(
    image, ground_truth, methods, unet_model, watershed_params, cc_params, unet_params, device, progress=None
):
    from ..analysis.segmentation import compare_segmentations

    return compare_segmentations(
        image,
        ground_truth,
        methods=methods,
        unet_model=unet_model,
        watershed_params=watershed_params,
        cc_params=cc_params,
        unet_params=unet_params,
        device=device,
        progress=progress,
    )


class CompareSegmentationWidget(TaskWidget):
    """Run several segmentation methods on one image and compare them with a ground truth."""

    display_name = "Compare segmentations"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, labels=True)
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.ground_truth = create_widget(annotation=Optional[napari.layers.Labels], label="ground truth")
        self.gt_file = FileEdit(mode="r", label="or mask file", value="", filter="*.png *.tif *.tiff *.bmp *.jpg")
        self.use_watershed = CheckBox(value=True, text="watershed")
        self.unet = ModelPicker("unet", {"unet": "U-Net file"}, label="U-Net model")
        self.use_unet = CheckBox(value=bool(self.unet.shipped()), text="U-Net")
        self.use_cc = CheckBox(value=True, text="connected components")
        self.threshold = ComboBox(
            choices=["otsu", "li", "yen", "triangle", "mean", "isodata"], value="otsu", label="threshold"
        )
        self.min_distance = SpinBox(value=0, min=0, max=500, label="min distance (0=auto)")
        self.min_size = SpinBox(value=0, min=0, max=100000, label="min size (0=auto)")
        self.tile = SpinBox(value=512, min=64, max=4096, step=64, label="tile")
        self.overlap = SpinBox(value=64, min=0, max=512, label="overlap")
        self.device = ComboBox(choices=list(DEVICES), value="auto", label="device")
        self.table = Table(label="metrics")
        self.table.read_only = True
        self.chart_label = wrap(Label(value=""))
        for name, tip in TOOLTIPS.items():
            w = getattr(self, name, None)
            if w is not None:
                w.tooltip = tip
        methods = Container(widgets=[self.use_watershed, self.use_unet, self.use_cc], layout="horizontal", labels=False)
        self.extend(
            [
                self.image,
                self.ground_truth,
                self.gt_file,
                methods,
                self.threshold,
                self.min_distance,
                self.min_size,
                self.unet,
                self.tile,
                self.overlap,
                self.device,
            ]
        )
        self._add_run_controls()
        self.extend([self.table, self.chart_label])
        self._figure = None
        self._canvas = None
        self._make_chart()
        self.run_button.changed.connect(self.run)
        #: the last ComparisonResult shown (for scripting and tests)
        self.last_result = None
        if viewer is not None:
            viewer.layers.events.inserted.connect(self._refresh_choices)
            viewer.layers.events.removed.connect(self._refresh_choices)
        for w in (
            self.image,
            self.use_watershed,
            self.use_unet,
            self.use_cc,
            self.unet.choice,
            self.unet.files["unet"],
        ):
            w.changed.connect(self.update_run_state)
        LIVE_WIDGETS.add(self)
        self.update_run_state()

    def _refresh_choices(self, *_):
        self.image.reset_choices()
        self.ground_truth.reset_choices()
        self.update_run_state()

    @property
    def unet_model(self):
        """The custom U-Net checkpoint field."""
        return self.unet.files["unet"]

    def set_checkpoint(self, kind: str, path) -> bool:
        """Use a trained U-Net checkpoint (kind 'unet') and tick the U-Net; False for other kinds."""
        if kind != "unet":
            return False
        self.unet.set_checkpoint("unet", path)
        self.use_unet.value = True
        self.update_run_state()
        return True

    def problem(self) -> str:
        layer = self.image.value
        if layer is None:
            return "Choose an image layer first."
        if not self.selected_methods():
            return "Tick at least one method."
        if self.use_unet.value:
            why = self.unet.problem()
            if why:
                return "U-Net: " + why
        return ""

    # -- chart -----------------------------------------------------------------------
    def _make_chart(self):
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except Exception:  # pragma: no cover - matplotlib without Qt backend
            return
        self._figure = Figure(figsize=(4, 2.4), tight_layout=True)
        self._canvas = FigureCanvasQTAgg(self._figure)
        self._canvas.setMinimumHeight(180)
        self.native.layout().addWidget(self._canvas)

    def _draw_chart(self, df):
        if self._figure is None:
            return
        self._figure.clear()
        ax = self._figure.add_subplot(111)
        cols = [c for c in ("dice", "iou", "f1_50") if c in df.columns]
        if not cols:
            ax.bar(df["method"], df["count"], color="#888888")
            ax.set_ylabel("objects")
        else:
            x = np.arange(len(df))
            wdt = 0.8 / len(cols)
            for k, c in enumerate(cols):
                ax.bar(x + (k - (len(cols) - 1) / 2) * wdt, df[c].astype(float), wdt, label=c)
            ax.set_xticks(x, [METHOD_HEADERS.get(m, m) for m in df["method"]])
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize=7, loc="lower right")
        ax.tick_params(labelsize=7)
        self._canvas.draw_idle()

    # -- run ---------------------------------------------------------------------------
    def selected_methods(self) -> list[str]:
        m = []
        if self.use_watershed.value:
            m.append("watershed")
        if self.use_unet.value:
            m.append("unet")
        if self.use_cc.value:
            m.append("connected_components")
        return m

    def _ground_truth(self):
        layer = self.ground_truth.value
        if layer is not None:
            return np.asarray(layer.data)
        path = self.gt_file.value
        if path and str(path) not in ("", ".") and Path(path).is_file():
            from ..io.masks import read_mask

            return read_mask(path)
        return None

    def run(self, *_):
        why = self.problem()
        if why:
            self.status.value = why
            return None
        layer = self.image.value
        methods = self.selected_methods()
        unet_model = None
        if "unet" in methods:
            from ..models import zoo

            try:
                unet_model = str(zoo.resolve(self.unet.model_name() or self.unet.file("unet"), "unet", "unet"))
            except zoo.ModelFileError as exc:
                self._on_error(exc)
                return None
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        data = np.asarray(data)
        if data.ndim > (3 if layer.rgb else 2):
            self.status.value = "Only 2-D images (gray or RGB) can be segmented."
            return None
        try:
            gt = self._ground_truth()
        except Exception as exc:
            self._on_error(exc)
            return None
        ws = {"threshold_method": self.threshold.value}
        cc = {"threshold_method": self.threshold.value}
        if self.min_distance.value:
            ws["min_distance"] = int(self.min_distance.value)
        if self.min_size.value:
            ws["min_size"] = cc["min_size"] = int(self.min_size.value)
        up = {"tile": int(self.tile.value), "overlap": int(self.overlap.value)}
        if self.min_size.value:
            up["min_size"] = int(self.min_size.value)
        source, name = layer, layer.name  # record the input now: results land on it

        def done(result):
            from ..layers.segmentation import show_comparison

            show_comparison(self._viewer, result, source, name)
            self.last_result = result
            df = result.metrics_table()
            self._show_table(df)
            self._draw_chart(df)
            counts = ", ".join(f"{METHOD_HEADERS.get(m, m)} {int(lab.max())}" for m, lab in result.labels.items())
            self.status.value = f"Done. Objects found (a merged clump counts as one): {counts}."
            if result.metrics:
                self.chart_label.value = (
                    "Circles on the image mark objects that swallow two or more true cells "
                    "(orange watershed, blue U-Net, green connected components)."
                )

        kwargs = dict(
            image=data,
            ground_truth=gt,
            methods=methods,
            unet_model=unet_model,
            watershed_params=ws,
            cc_params=cc,
            unet_params=up,
            device=self.device.value,
        )
        return self.start(_run_comparison, kwargs, done)

    def _show_table(self, df):
        """Methods as columns and metrics as rows: fits a narrow dock."""
        rows = [(col, head) for col, head in METRIC_ROWS if col in df.columns]
        cols = {}
        for _, r in df.iterrows():
            vals = []
            for col, _h in rows:
                v = r[col]
                vals.append(fmt(round(float(v), 2), 2) if col == "seconds" else fmt(v, 3))
            cols[METHOD_HEADERS.get(r["method"], r["method"])] = vals
        show_table(self.table, cols, row_headers=[h for _c, h in rows])
