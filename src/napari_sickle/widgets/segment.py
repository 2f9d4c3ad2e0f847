"""Dock widget "Compare segmentations": watershed vs U-Net vs connected components.

A thin front end over :func:`napari_sickle.analysis.segmentation.compare_segmentations`;
layers are made in :mod:`napari_sickle.layers.segmentation`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, SpinBox, Table, create_widget

from ..constants import DEVICES
from ._base import TaskWidget

TOOLTIPS = {
    "image": "Bright-field smear to segment (gray, RGB or RGBA; 8/16-bit or float).",
    "ground_truth": "Optional ground truth: a Labels layer (instances or a binary mask).",
    "gt_file": "Or a mask/label image file (binary masks are split into cells by connected components).",
    "threshold": "Global threshold used by watershed and connected components (cells darker than background).",
    "min_distance": "Watershed: minimum distance between cell centres in px (0 = auto from cell size).",
    "min_size": "Smallest object kept, px (0 = auto from cell size).",
    "unet_model": "U-Net checkpoint (best.pt from `python -m napari_sickle.train unet`).",
    "tile": "U-Net tile size in px at the model's working scale; overlapping tiles are blended.",
    "overlap": "Overlap of neighbouring U-Net tiles in px.",
}


def _run_comparison(image, ground_truth, methods, unet_model, watershed_params, cc_params, unet_params, device, progress=None):
    from ..analysis.segmentation import compare_segmentations

    return compare_segmentations(
        image, ground_truth, methods=methods, unet_model=unet_model, watershed_params=watershed_params,
        cc_params=cc_params, unet_params=unet_params, device=device, progress=progress,
    )


class CompareSegmentationWidget(TaskWidget):
    """Run several segmentation methods on one image and compare them with a ground truth."""

    def __init__(self, viewer: "napari.viewer.Viewer"):  # noqa: F821
        super().__init__(viewer, labels=True)
        self.image = create_widget(annotation="napari.layers.Image", label="image")
        self.ground_truth = create_widget(annotation=Optional["napari.layers.Labels"], label="ground truth")
        self.gt_file = FileEdit(mode="r", label="or mask file", value="", filter="*.png *.tif *.tiff *.bmp *.jpg")
        self.use_watershed = CheckBox(value=True, text="watershed")
        self.use_unet = CheckBox(value=False, text="U-Net")
        self.use_cc = CheckBox(value=True, text="connected components")
        self.threshold = ComboBox(choices=["otsu", "li", "yen", "triangle", "mean", "isodata"], value="otsu", label="threshold")
        self.min_distance = SpinBox(value=0, min=0, max=500, label="min distance (0=auto)")
        self.min_size = SpinBox(value=0, min=0, max=100000, label="min size (0=auto)")
        self.unet_model = FileEdit(mode="r", label="U-Net model", value="", filter="*.pt")
        self.tile = SpinBox(value=512, min=64, max=4096, step=64, label="tile")
        self.overlap = SpinBox(value=64, min=0, max=512, label="overlap")
        self.device = ComboBox(choices=list(DEVICES), value="auto", label="device")
        self.table = Table(label="metrics")
        self.table.read_only = True
        self.chart_label = Label(value="")
        for name, tip in TOOLTIPS.items():
            w = getattr(self, name, None)
            if w is not None:
                w.tooltip = tip
        methods = Container(widgets=[self.use_watershed, self.use_unet, self.use_cc], layout="horizontal", labels=False)
        self.extend([
            self.image, self.ground_truth, self.gt_file, methods, self.threshold, self.min_distance,
            self.min_size, self.unet_model, self.tile, self.overlap, self.device,
        ])
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

    def _refresh_choices(self, *_):
        self.image.reset_choices()
        self.ground_truth.reset_choices()

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
            ax.set_xticks(x, [m.replace("connected_components", "conn. comp.") for m in df["method"]])
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
        layer = self.image.value
        if layer is None:
            self.status.value = "Choose an image layer first."
            return None
        methods = self.selected_methods()
        if not methods:
            self.status.value = "Tick at least one method."
            return None
        unet_model = None
        if "unet" in methods:
            p = self.unet_model.value
            if not p or str(p) in ("", ".") or not Path(p).is_file():
                self.status.value = "The U-Net needs a model file (best.pt from `train unet`)."
                return None
            unet_model = str(p)
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
            self.table.value = df.map(_fmt)
            self._draw_chart(df)
            self.status.value = "Done: " + ", ".join(f"{m} {int(lab.max())} objects" for m, lab in result.labels.items())

        kwargs = dict(
            image=data, ground_truth=gt, methods=methods, unet_model=unet_model, watershed_params=ws,
            cc_params=cc, unet_params=up, device=self.device.value,
        )
        return self.start(_run_comparison, kwargs, done)


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return round(float(v), 3)
    if isinstance(v, np.integer):
        return int(v)
    return v
