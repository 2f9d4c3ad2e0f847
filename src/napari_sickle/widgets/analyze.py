"""'Analyze RBC smear' dock widget: detect regions, classify six types, call abnormal."""

import napari
from magicgui.widgets import (
    ComboBox,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
    Table,
    create_widget,
)

from ..constants import DEVICES
from ._base import LIVE_WIDGETS, TaskWidget, notify
from ._display import show_table, wrap
from ._models import ModelPicker, path_or_none


def _run_analysis(
    image,
    model,
    detector_path,
    classifier_path,
    device,
    score_threshold,
    nms_iou,
    batch_size,
    image_name,
    model_cache,
    cell_diameter=None,
    progress=None,
):
    """Worker body (no Qt): load (or reuse) the models, then analyze."""
    from ..analysis.smear import analyze_smear
    from ..models.registry import load_models

    key = (model, detector_path, classifier_path, device)
    models = model_cache.get(key)
    if models is None:
        if progress is not None:
            progress("loading models", 0, 2)
        models = load_models(detector_path, classifier_path, device=device, progress=progress, model=model)
        model_cache.clear()
        model_cache[key] = models
    return analyze_smear(
        image,
        models,
        score_threshold=score_threshold,
        nms_iou=nms_iou,
        batch_size=batch_size,
        device=device,
        progress=progress,
        image_name=image_name,
        cell_diameter=cell_diameter,
    )


class AnalyzeRBCWidget(TaskWidget):
    """Boxes every RBC region of the selected image with its types and abnormal call.

    Results land on the layer the run started from (``<image> · RBC regions`` Shapes,
    ``<image> · RBC outlines`` Labels and ``<image> · RBC types`` code badges) and are
    updated in place on re-run; input layers are never overwritten.
    """

    display_name = "Analyze RBC smear"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer, label=False)
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.model = ModelPicker("rbc", {"detector": "detector", "classifier": "classifier"})
        self.device = ComboBox(choices=list(DEVICES), value="auto", label="device")
        self.score_threshold = FloatSpinBox(
            value=0.5,
            min=0.01,
            max=0.99,
            step=0.05,
            label="score threshold",
            tooltip="Detections scoring below this are dropped; lower it when cells are missed.",
        )
        self.nms_iou = FloatSpinBox(value=0.5, min=0.05, max=0.95, step=0.05, label="NMS IoU")
        self.batch_size = SpinBox(value=64, min=1, max=1024, label="batch size")
        self.cell_diameter = SpinBox(
            value=0,
            min=0,
            max=1000,
            label="cell diameter (px)",
            tooltip="Typical red cell diameter in pixels; 0 = estimate it from the image. "
            "A detector trained at one cell size sees the image rescaled to it.",
        )
        self.color_by = ComboBox(choices=["abnormal", "type"], value="abnormal", label="colour by")
        self.legend = wrap(Label(value=""))
        self.summary = Table(value={"item": [], "value": []}, label="summary")
        self.summary.read_only = True
        self.export_path = FileEdit(mode="w", filter="*.csv", label="export CSV", value="")
        self.export_button = PushButton(text="Export regions CSV", enabled=False)
        self.extend(
            [
                self.image,
                self.model,
                self.device,
                self.score_threshold,
                self.nms_iou,
                self.cell_diameter,
                self.batch_size,
                self.color_by,
            ]
        )
        self._add_run_controls()
        self.extend([self.legend, self.summary, self.export_path, self.export_button])
        self._model_cache: dict = {}
        self.last_result = None
        self._last_source = None
        self.run_button.changed.connect(self.run)
        self.color_by.changed.connect(self._recolor)
        self.export_button.changed.connect(self.export)
        self.image.changed.connect(self.update_run_state)
        self.model.choice.changed.connect(self.update_run_state)
        for f in self.model.files.values():
            f.changed.connect(self.update_run_state)
        try:
            viewer.layers.events.inserted.connect(self._refresh_choices)
            viewer.layers.events.removed.connect(self._refresh_choices)
        except AttributeError:  # pragma: no cover
            pass
        LIVE_WIDGETS.add(self)
        self.update_run_state()

    # -- compatibility: the checkpoint fields ------------------------------------------
    @property
    def detector(self):
        return self.model.files["detector"]

    @property
    def classifier(self):
        return self.model.files["classifier"]

    def set_checkpoint(self, kind: str, path) -> bool:
        """Use a trained checkpoint: ``kind`` 'detector' or 'multilabel' (the classifier).
        Returns False for kinds this widget does not take."""
        role = {"detector": "detector", "multilabel": "classifier", "classifier": "classifier"}.get(kind)
        if role is None:
            return False
        self.model.set_checkpoint(role, path)
        self.update_run_state()
        return True

    def _refresh_choices(self, *_):
        self.image.reset_choices()
        self.update_run_state()

    _path_or_none = staticmethod(path_or_none)

    def problem(self) -> str:
        if self.image.value is None:
            return "Select an image layer (open a smear, or File › Open Sample › napari-sickle)."
        return self.model.problem()

    # -- run -----------------------------------------------------------------------------
    def run(self, *_):
        layer = self.image.value
        if layer is None:
            self.status.value = self.problem()
            return None
        source = layer  # results land here even if the user switches layers
        kwargs = dict(
            image=layer.data if not getattr(layer, "multiscale", False) else layer.data[0],
            model=self.model.model_name(),
            detector_path=self.model.file("detector"),
            classifier_path=self.model.file("classifier"),
            device=self.device.value,
            score_threshold=float(self.score_threshold.value),
            nms_iou=float(self.nms_iou.value),
            batch_size=int(self.batch_size.value),
            image_name=layer.name,
            model_cache=self._model_cache,
            cell_diameter=float(self.cell_diameter.value) or None,
        )
        return self.start(_run_analysis, kwargs, lambda res: self._show(res, source))

    def _show(self, result, source):
        from ..layers import upsert_layer
        from ..layers.rbc import legend, result_to_layers, summary_table

        self.last_result = result
        self._last_source = source
        self._layers = [
            upsert_layer(self._viewer, ldt)
            for ldt in result_to_layers(result, source.name, source_layer=source, color_by=self.color_by.value)
        ]
        table = summary_table(result.summary)
        show_table(self.summary, {"regions": table["value"]}, row_headers=table["item"])
        self.legend.value = legend(self.color_by.value)
        self.export_button.enabled = True
        s = result.summary
        if s["n_regions"] == 0:
            about = self.model.describe()
            self.status.value = (
                "No regions found. The detector may not know images like this one "
                f"({about.rstrip('.')}). Try a lower score threshold, the cell diameter, or another model."
            )
        else:
            self.status.value = (
                f"{s['n_regions']} regions boxed (a region is one cell or a group of touching cells); "
                f"{s['n_abnormal']} called abnormal ({s['abnormal_fraction']:.0%}). "
                f"SCD screening: {s['scd_call']} ({s['scd_reason']})."
            )
            if s["types_uncertain"]:
                also = (
                    ", even with its cells' lightness matched to the training smears" if s["lightness_matched"] else ""
                )
                notify(
                    f"The cell types are uncertain on this smear (type uncertainty {s['type_uncertainty']:.2f}{also}): "
                    "its cells look unlike the classifier's training data (another camera or stain, or cells "
                    "with none of the six types, such as target cells). No SCD call is made. Check the types "
                    "on a few cells by eye, or train on labelled cells of your own."
                )
            elif s["lightness_matched"]:
                notify(
                    "The cell types were uncertain on this smear as it is, so they were read with its cells' "
                    "lightness matched to the classifier's training smears: surer, but not checked on images "
                    "like yours. No SCD call is made. Check the types on a few cells by eye, or train on "
                    "labelled cells of your own."
                )

    def _result_layer(self, index: int):
        layers = getattr(self, "_layers", None)
        if not layers:
            return None
        layer = layers[index]
        return layer if layer in self._viewer.layers else None

    def _regions_layer(self):
        return self._result_layer(1)

    def _recolor(self, *_):
        from ..layers.rbc import legend, recolor

        layer = self._regions_layer()
        if layer is not None:
            recolor(layer, self.color_by.value, self._result_layer(2))
            self.legend.value = legend(self.color_by.value)

    def export(self, *_):
        """Write the last result to the export path in the regions CSV schema (never overwrites)."""
        from ..io.formats import write_regions_csv

        if self.last_result is None:
            self.status.value = "Nothing to export; press Run first."
            return None
        path = path_or_none(self.export_path.value)
        if path is None:
            self.status.value = "Choose an export CSV path first."
            return None
        try:
            out = write_regions_csv(self.last_result.to_dataframe(self._last_source.name), path)
        except (FileExistsError, OSError, ValueError) as exc:
            self.status.value = f"Export failed: {exc}"
            return None
        self.status.value = f"Exported {len(self.last_result)} regions (one row each) to {out}"
        return out
