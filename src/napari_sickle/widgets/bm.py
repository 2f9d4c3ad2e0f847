"""Dock widget "Classify BM cells": top-k classes and a CAM heatmap per cell.

Inputs: an Image layer holding one cell (2-D, grey or RGB), a stack of cells (each slice
is classified), or regions selected in a Shapes layer drawn over a larger 2-D image (all
shapes of the layer when none is selected). The work runs in a thread worker
(``napari_sickle.analysis.bm.explain``) with progress (model loading included), Cancel and
batching; results are turned into layers by ``napari_sickle.layers.bm``. The model is a
named shipped white-cell model or a checkpoint file; the widget never runs an untrained head.
"""

import napari
import numpy as np
from magicgui.widgets import ComboBox, Label, SpinBox, Table, create_widget

from ..constants import DEVICES
from ._base import LIVE_WIDGETS, TaskWidget
from ._display import fmt, show_table, signed, wrap
from ._models import ModelPicker

PREDICTED = "predicted class"
MATEK_HINT = (
    "The 21 Matek bone-marrow classes need a model you train yourself "
    "(Train models › bm on a Matek-style folder), then chosen here as a custom checkpoint."
)


def _run_explain(images, model_key, model_ref, model_cache, method, target, top_k, batch_size, device, progress=None):
    """Worker body (no Qt): load (or reuse) the model with progress, then classify + explain."""
    from ..analysis.bm import explain
    from ..models.bm import load_bm_model

    model = model_cache.get(model_key)
    if model is None:
        if progress is not None:
            progress("loading model", 0, 1)
        model = load_bm_model(model_ref)
        model_cache.clear()
        model_cache[model_key] = model
        if progress is not None:
            progress("loading model", 1, 1)
    return explain(
        images,
        model=model,
        method=method,
        target=target,
        top_k=top_k,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )


class ClassifyBMWidget(TaskWidget):
    """Top-k classes and a CAM heatmap per white / bone-marrow cell, with a named model."""

    display_name = "Classify BM cells"

    def __init__(self, viewer: napari.viewer.Viewer):
        from ..analysis.bm import CAM_METHOD_LABELS

        super().__init__(viewer, labels=True)
        self.image = create_widget(annotation=napari.layers.Image, label="cell image(s)")
        self.regions = create_widget(
            annotation=napari.layers.Shapes, label="regions (optional)", options={"nullable": True}
        )
        self.regions.value = None
        self.model = ModelPicker("wbc", {"checkpoint": "model file"}, custom_hint=MATEK_HINT)
        self.matek_note = wrap(Label(value="", label=" "))
        self.device = ComboBox(choices=list(DEVICES), value="auto", label="device")
        self.method = ComboBox(
            choices=[(v, k) for k, v in CAM_METHOD_LABELS.items()], value="gradcam", label="CAM method"
        )
        self._names_cache: tuple = (None, [])
        self.target = ComboBox(choices=self._target_choices, label="target class")
        self.top_k = SpinBox(value=5, min=1, max=50, label="top-k")
        self.batch_size = SpinBox(value=16, min=1, max=512, label="batch size")
        self.faithfulness = wrap(Label(value="", label="faithfulness"))
        self.table = Table(label="results")
        self.table.read_only = True
        self.extend(
            [
                self.image,
                self.regions,
                self.model,
                self.matek_note,
                self.device,
                self.method,
                self.target,
                self.top_k,
                self.batch_size,
            ]
        )
        self._add_run_controls()
        self.extend([self.faithfulness, self.table])
        self._model_cache: dict = {}
        self.model.choice.changed.connect(self._refresh_targets)
        self.model.files["checkpoint"].changed.connect(self._refresh_targets)
        self.image.changed.connect(self.update_run_state)
        self.run_button.changed.connect(self.run)
        try:
            viewer.layers.events.inserted.connect(self._refresh_choices)
            viewer.layers.events.removed.connect(self._refresh_choices)
        except AttributeError:  # pragma: no cover
            pass
        self._refresh_targets()
        self.last_result = None
        LIVE_WIDGETS.add(self)

    def _refresh_choices(self, *_):
        self.image.reset_choices()
        self.regions.reset_choices()
        self.update_run_state()

    # -- model / targets -----------------------------------------------------------
    @property
    def model_file(self):
        """The custom checkpoint field."""
        return self.model.files["checkpoint"]

    def set_checkpoint(self, kind: str, path) -> bool:
        """Use a trained checkpoint of kind 'bm'; False for other kinds."""
        if kind != "bm":
            return False
        self.model.set_checkpoint("checkpoint", path)
        self._refresh_targets()
        return True

    def _model_arg(self):
        """The shipped model's name or the custom checkpoint path; None when nothing usable is
        chosen (the widget never falls back to an untrained head)."""
        return self.model.model_name() or self.model.file("checkpoint")

    def _target_choices(self, *_):
        return [PREDICTED] + self._class_names()

    def _class_names(self) -> list:
        key = self._model_arg() if hasattr(self, "model") else None
        if key is None:
            return []
        if self._names_cache[0] != key:
            self._names_cache = (key, self._read_class_names(key))
        return list(self._names_cache[1])

    def _read_class_names(self, ref) -> list:
        from ..models import zoo
        from ..models.checkpoint import load_checkpoint

        try:
            path = zoo.resolve(ref, "wbc", "classifier")
            return list(load_checkpoint(path, kind="bm")["config"].get("class_names", []))
        except Exception as exc:
            self.status.value = f"Error: {exc}"
            return []

    def _refresh_targets(self, *_):
        names = self._class_names()
        self.target.reset_choices()
        self.target.value = PREDICTED
        self.top_k.max = max(1, len(names) or 50)
        self.top_k.value = min(self.top_k.value, self.top_k.max)
        if names:
            shown = ", ".join(names[:8]) + ("…" if len(names) > 8 else "")
            note = f"Classes ({len(names)}): {shown}."
            if not self.model.is_custom:
                note += " " + MATEK_HINT
            self.matek_note.value = note
        else:
            self.matek_note.value = ""
        self.update_run_state()

    def problem(self) -> str:
        if self.image.value is None:
            return "Choose an Image layer with the cell(s)."
        why = self.model.problem()
        if why:
            return why
        if self._model_arg() is None:
            return "Choose a white-cell model."
        return ""

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
        raise ValueError(
            f"Image layer {layer.name!r} has {spatial_ndim} dimensions; expected one cell (2-D) "
            "or a stack of cells (3-D)."
        )

    # -- run -------------------------------------------------------------------------
    def run(self, *_):
        why = self.problem()
        if why:
            self.status.value = why
            return None
        try:
            cells, placement, boxes, source = self.collect_cells()
        except ValueError as exc:
            self._on_error(exc)
            return None
        target = None if self.target.value == PREDICTED else self.target.value
        ref = self._model_arg()
        kwargs = dict(
            images=cells,
            model_key=(ref, self.device.value),
            model_ref=ref,
            model_cache=self._model_cache,
            method=self.method.value,
            target=target,
            top_k=int(self.top_k.value),
            batch_size=int(self.batch_size.value),
            device=self.device.value,
        )

        def done(result):
            self.show_result(result, source, placement, boxes)

        return self.start(_run_explain, kwargs, done)

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
        cols = {
            "cell": [str(int(c) + 1) for c in summ["cell"]],
            "prediction": [f"{p} ({fmt(q, 2)})" for p, q in zip(summ["prediction"], summ["probability"])],
        }
        if (summ["target"] != summ["prediction"]).any():
            cols["explained"] = list(summ["target"])
        if "faithfulness" in summ:
            cols["faithful."] = [signed(v) for v in summ["faithfulness"]]
        cols["top-k"] = list(summ["top_k"])  # last: it takes the rest of the width and wraps
        show_table(self.table, cols)
        if result.faithfulness is not None:
            f = result.faithfulness
            self.faithfulness.value = (
                f"{result.faithfulness_metric} change when only the heatmap is kept: mean {signed(np.mean(f))} "
                f"(min {signed(np.min(f))}, max {signed(np.max(f))}) over {result.n} heatmap(s); "
                "near 0 or positive: the heatmap holds the evidence."
            )
        name = self.model.model_name() or "your checkpoint"
        self.status.value = f"Classified {result.n} cell(s) with {name} ({result.model_arch})."
