"""'Analyze RBC smear' dock widget: detect regions, classify six types, call abnormal."""
from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, PushButton, SpinBox, Table, create_widget

from ..constants import DEVICES
from ._base import TaskWidget


def _run_analysis(image, detector_path, classifier_path, device, score_threshold, nms_iou, batch_size, image_name,
                  model_cache, progress=None):
    """Worker body (no Qt): load (or reuse / train) the models, then analyze."""
    from ..analysis.smear import analyze_smear
    from ..models.registry import load_models

    key = (detector_path, classifier_path, device)
    models = model_cache.get(key)
    if models is None:
        models = load_models(detector_path, classifier_path, device=device, progress=progress)
        model_cache.clear()
        model_cache[key] = models
    return analyze_smear(image, models, score_threshold=score_threshold, nms_iou=nms_iou, batch_size=batch_size,
                         device=device, progress=progress, image_name=image_name)


class AnalyzeRBCWidget(TaskWidget):
    """Boxes every RBC region of the selected image with its types and abnormal call.

    Results land on the layer the run started from (``<image> regions`` Shapes and
    ``<image> region masks`` Labels) and are updated in place on re-run.
    """

    def __init__(self, viewer: "napari.viewer.Viewer"):  # noqa: F821
        super().__init__(viewer, label=False)
        self.image = create_widget(annotation="napari.layers.Image", label="image")
        self.detector = FileEdit(mode="r", filter="*.pt", label="detector", value="",
                                 tooltip="Detector checkpoint (.pt); empty = the default model")
        self.classifier = FileEdit(mode="r", filter="*.pt", label="classifier", value="",
                                   tooltip="Multi-label classifier checkpoint (.pt); empty = the default model")
        self.device = ComboBox(choices=list(DEVICES), value="auto", label="device")
        self.score_threshold = FloatSpinBox(value=0.5, min=0.01, max=0.99, step=0.05, label="score threshold")
        self.nms_iou = FloatSpinBox(value=0.5, min=0.05, max=0.95, step=0.05, label="NMS IoU")
        self.batch_size = SpinBox(value=64, min=1, max=1024, label="batch size")
        self.color_by = ComboBox(choices=["abnormal", "type"], value="abnormal", label="colour by")
        self.summary = Table(value={"item": [], "value": []}, label="summary")
        self.export_path = FileEdit(mode="w", filter="*.csv", label="export CSV", value="")
        self.export_button = PushButton(text="Export regions CSV", enabled=False)
        self.extend([self.image, self.detector, self.classifier, self.device, self.score_threshold, self.nms_iou,
                     self.batch_size, self.color_by])
        self._add_run_controls()
        self.extend([self.summary, self.export_path, self.export_button])
        self._model_cache: dict = {}
        self.last_result = None
        self._last_source = None
        self.run_button.changed.connect(self.run)
        self.color_by.changed.connect(self._recolor)
        self.export_button.changed.connect(self.export)
        try:
            viewer.layers.events.inserted.connect(self._refresh_choices)
            viewer.layers.events.removed.connect(self._refresh_choices)
        except AttributeError:  # pragma: no cover
            pass

    def _refresh_choices(self, *_):
        self.image.reset_choices()

    @staticmethod
    def _path_or_none(value):
        s = str(value or "").strip()
        if not s or s == "." or Path(s).is_dir():
            return None
        return s

    # -- run -----------------------------------------------------------------------------
    def run(self, *_):
        layer = self.image.value
        if layer is None:
            self.status.value = "Select an image layer first."
            return None
        source = layer  # results land here even if the user switches layers
        kwargs = dict(
            image=layer.data if not getattr(layer, "multiscale", False) else layer.data[0],
            detector_path=self._path_or_none(self.detector.value),
            classifier_path=self._path_or_none(self.classifier.value),
            device=self.device.value,
            score_threshold=float(self.score_threshold.value),
            nms_iou=float(self.nms_iou.value),
            batch_size=int(self.batch_size.value),
            image_name=layer.name,
            model_cache=self._model_cache,
        )
        return self.start(_run_analysis, kwargs, lambda res: self._show(res, source))

    def _show(self, result, source):
        from ..layers import upsert_layer
        from ..layers.rbc import result_to_layers, summary_table

        self.last_result = result
        self._last_source = source
        for ldt in result_to_layers(result, source.name, source_layer=source, color_by=self.color_by.value):
            upsert_layer(self._viewer, ldt)
        self.summary.value = summary_table(result.summary)
        self.export_button.enabled = True
        s = result.summary
        self.status.value = (f"{s['n_regions']} regions, {s['n_abnormal']} abnormal "
                             f"({s['abnormal_fraction']:.0%}); SCD screening: {s['scd_call']}")

    def _regions_layer(self):
        from ..layers.rbc import regions_name

        if self._last_source is None:
            return None
        name = regions_name(self._last_source.name)
        return self._viewer.layers[name] if name in self._viewer.layers else None

    def _recolor(self, *_):
        from ..layers.rbc import recolor

        layer = self._regions_layer()
        if layer is not None:
            recolor(layer, self.color_by.value)

    def export(self, *_):
        """Write the last result to the export path in the regions CSV schema (never overwrites)."""
        from ..io.formats import write_regions_csv

        if self.last_result is None:
            self.status.value = "Nothing to export; press Run first."
            return None
        path = self._path_or_none(self.export_path.value)
        if path is None:
            self.status.value = "Choose an export CSV path first."
            return None
        try:
            out = write_regions_csv(self.last_result.to_dataframe(self._last_source.name), path)
        except (FileExistsError, OSError, ValueError) as exc:
            self.status.value = f"Export failed: {exc}"
            return None
        self.status.value = f"Exported {len(self.last_result)} regions to {out}"
        return out
