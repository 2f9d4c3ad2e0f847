"""Dock widget "Classify BM cells": top-k classes and a CAM heatmap per cell.

Inputs: an Image layer holding one cell (2-D, grey or RGB), a stack of cells (each slice
is classified), or regions selected in a Shapes layer drawn over a larger 2-D image (all
shapes of the layer when none is selected). The work runs in a thread worker
(``napari_sickle.analysis.bm.explain``) with progress, Cancel and batching; results are
turned into layers by ``napari_sickle.layers.bm``.
"""
from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, Label, SpinBox, Table, create_widget

from ..constants import DEVICES
from ._base import TaskWidget

DEFAULT_MODEL_LABEL = "built-in default"
PREDICTED = "predicted class"


class ClassifyBMWidget(TaskWidget):
    def __init__(self, viewer: "napari.viewer.Viewer"):  # noqa: F821
        from ..analysis.bm import CAM_METHOD_LABELS

        super().__init__(viewer, labels=True)
        self.image = create_widget(annotation="napari.layers.Image", label="cell image(s)")
        self.regions = create_widget(annotation="napari.layers.Shapes", label="regions (optional)",
                                     options={"nullable": True})
        self.regions.value = None
        self.model_file = FileEdit(mode="r", filter="*.pt", label="model checkpoint",
                                   tooltip="A napari-sickle BM checkpoint (.pt); empty: the built-in default.")
        self.device = ComboBox(choices=list(DEVICES), value="auto", label="device")
        self.method = ComboBox(choices=[(v, k) for k, v in CAM_METHOD_LABELS.items()], value="gradcam",
                               label="CAM method")
        self._names_cache: tuple = (None, [])
        self.target = ComboBox(choices=self._target_choices, label="target class")
        self.top_k = SpinBox(value=5, min=1, max=50, label="top-k")
        self.batch_size = SpinBox(value=16, min=1, max=512, label="batch size")
        self.faithfulness = Label(value="", label="faithfulness")
        self.table = Table(label="top-k table")
        self.extend([self.image, self.regions, self.model_file, self.device, self.method, self.target,
                     self.top_k, self.batch_size])
        self._add_run_controls()
        self.extend([self.faithfulness, self.table])
        self.model_file.changed.connect(self._refresh_targets)
        self.run_button.changed.connect(self.run)
        self._refresh_targets()
        self.last_result = None

    # -- model / targets -----------------------------------------------------------
    def _model_arg(self):
        v = self.model_file.value
        if v is None or str(v) in ("", "."):
            return None
        return str(v)

    def _target_choices(self, *_):
        return [PREDICTED] + self._class_names()

    def _class_names(self) -> list[str]:
        key = self._model_arg() if hasattr(self, "model_file") else None
        if self._names_cache[0] != key or key is None:
            self._names_cache = (key, self._read_class_names(key))
        return list(self._names_cache[1])

    def _read_class_names(self, path) -> list[str]:
        from ..models.bm import DEFAULT_CLASS_NAMES, default_model_path
        from ..models.checkpoint import load_checkpoint

        if path is None:
            p = default_model_path()
            if not p.is_file():
                return list(DEFAULT_CLASS_NAMES)
            path = p
        try:
            return list(load_checkpoint(path, kind="bm")["config"].get("class_names", []))
        except Exception as exc:
            self.status.value = f"Error: {exc}"
            return []

    def _refresh_targets(self, *_):
        names = self._class_names()
        self.target.reset_choices()
        self.target.value = PREDICTED
        self.top_k.max = max(1, len(names) or 50)

    # -- inputs ----------------------------------------------------------------------
    def collect_cells(self):
        """-> (cells, placement, boxes, source_layer) from the current inputs."""
        layer = self.image.value
        if layer is None:
            raise ValueError("Choose an Image layer with the cell(s).")
        data = np.asarray(layer.data)
        spatial_ndim = layer.ndim
        shapes_layer = self.regions.value
        if shapes_layer is not None and len(shapes_layer.data):
            if spatial_ndim != 2:
                raise ValueError("Regions need a 2-D image (one smear), not a stack.")
            idx = sorted(shapes_layer.selected_data) or list(range(len(shapes_layer.data)))
            cells, boxes = [], []
            h, w = data.shape[:2]
            for i in idx:
                verts = np.asarray(shapes_layer.data[i], float)[:, -2:]
                world = verts * np.asarray(shapes_layer.scale[-2:]) + np.asarray(shapes_layer.translate[-2:])
                pix = (world - np.asarray(layer.translate[-2:])) / np.asarray(layer.scale[-2:])
                r0, c0 = np.floor(pix.min(0) + 0.5).astype(int)
                r1, c1 = np.floor(pix.max(0) + 0.5).astype(int)
                r0, c0 = max(r0, 0), max(c0, 0)
                r1, c1 = min(r1, h), min(c1, w)
                if r1 - r0 < 2 or c1 - c0 < 2:
                    raise ValueError(f"Region {i} lies outside the image or is smaller than 2x2 pixels.")
                cells.append(data[r0:r1, c0:c1])
                boxes.append((int(r0), int(c0), int(r1), int(c1)))
            return cells, "regions", boxes, layer
        if spatial_ndim == 2:
            return [data], "cell", None, layer
        if spatial_ndim == 3:
            return list(data), "stack", None, layer
        raise ValueError(f"Image layer {layer.name!r} has {spatial_ndim} dimensions; expected one cell (2-D) "
                         "or a stack of cells (3-D).")

    # -- run -------------------------------------------------------------------------
    def run(self, *_):
        from ..analysis.bm import explain

        try:
            cells, placement, boxes, source = self.collect_cells()
        except ValueError as exc:
            self._on_error(exc)
            return None
        target = None if self.target.value == PREDICTED else self.target.value
        kwargs = dict(images=cells, model=self._model_arg(), method=self.method.value, target=target,
                      top_k=int(self.top_k.value), batch_size=int(self.batch_size.value),
                      device=self.device.value)

        def done(result):
            self.show_result(result, source, placement, boxes)

        return self.start(explain, kwargs, done)

    def show_result(self, result, source, placement, boxes=None):
        from ..layers import upsert_layer
        from ..layers.bm import bm_result_layers

        self.last_result = result
        # drop stale per-region heatmaps from an earlier run with more regions
        for layer in list(self._viewer.layers):
            if layer.name.startswith("BM heatmap") and layer._type_string == "image":
                self._viewer.layers.remove(layer)
        for ldt in bm_result_layers(result, source, placement=placement, boxes=boxes):
            upsert_layer(self._viewer, ldt)
        summ = result.summary()
        import pandas as pd

        self.table.value = pd.DataFrame({
            "cell": summ["cell"].astype(int), "top-k": summ["top_k"], "target": summ["target"],
            "faithfulness": [f"{v:+.3f}" for v in summ["faithfulness"]] if "faithfulness" in summ else "",
        })
        if result.faithfulness is not None:
            f = result.faithfulness
            self.faithfulness.value = (f"{result.faithfulness_metric}: mean {np.mean(f):+.3f} "
                                       f"(min {np.min(f):+.3f}, max {np.max(f):+.3f}) over {result.n} heatmap(s)")
        self.status.value = f"Classified {result.n} cell(s) with {result.model_arch}."
