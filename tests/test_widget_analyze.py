"""GUI test: the 'Analyze RBC smear' widget in a real viewer with quick-trained models."""
from __future__ import annotations

import numpy as np
import pytest

from napari_sickle.constants import RBC_TYPES


@pytest.fixture(scope="module")
def tiny_models(tiny_rbc_models):
    return tiny_rbc_models


@pytest.fixture(scope="module")
def smear():
    from napari_sickle.data.simulate import simulate_smear

    return simulate_smear(seed=21, shape=(320, 480))


def _wait_idle(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def test_analyze_widget_end_to_end(make_napari_viewer, qtbot, tiny_models, smear, tmp_path):
    from napari_sickle.io.formats import read_regions_csv
    from napari_sickle.widgets.analyze import AnalyzeRBCWidget

    viewer = make_napari_viewer()
    src = viewer.add_image(smear.image, name="smear", scale=(0.5, 0.5), translate=(10, 20))
    other = viewer.add_image(np.zeros((50, 60), np.uint8), name="other")
    widget = AnalyzeRBCWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device.value = "cpu"
    widget.image.value = src

    # -- run, then switch layers while it works: results land on the starting layer
    widget.run_button.clicked.emit() if hasattr(widget.run_button, "clicked") else widget.run()
    assert widget.busy
    viewer.layers.selection.active = other
    widget.image.value = other
    _wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert "smear regions" in viewer.layers and "smear region masks" in viewer.layers
    assert "other regions" not in viewer.layers
    shapes, labels = viewer.layers["smear regions"], viewer.layers["smear region masks"]
    n = len(shapes.data)
    assert n > 0 and n == len(widget.last_result)
    feats = shapes.features
    for col in ["score", "p_abnormal", "abnormal", "label"] + [f"p_{t}" for t in RBC_TYPES] + list(RBC_TYPES):
        assert col in feats.columns, col
    assert np.allclose(feats["p_abnormal"], widget.last_result.p_abnormal)
    assert set(np.unique(labels.data)) - {0} <= set(range(1, n + 1))
    assert tuple(shapes.scale) == (0.5, 0.5) and tuple(labels.translate) == (10, 20)
    # abnormal regions highlighted in the Labels colormap
    abn_ids = [i + 1 for i, a in enumerate(feats["abnormal"]) if a]
    nrm_ids = [i + 1 for i, a in enumerate(feats["abnormal"]) if not a]
    if abn_ids and nrm_ids:
        c_abn = np.asarray(labels.colormap.map(abn_ids[0]))
        c_nrm = np.asarray(labels.colormap.map(nrm_ids[0]))
        assert not np.allclose(c_abn, c_nrm)
    # summary table
    table = widget.summary.to_dataframe()
    rows = dict(zip(table["item"], table["value"]))
    assert int(rows["regions"]) == n and "SCD screening" in rows

    # -- colour by type
    before = np.array(shapes.edge_color)
    widget.color_by.value = "type"
    after = np.array(shapes.edge_color)
    assert after.shape == before.shape

    # -- re-run updates the same layers in place
    n_layers = len(viewer.layers)
    widget.image.value = src
    widget.score_threshold.value = 0.9
    widget.run()
    _wait_idle(qtbot, widget)
    assert widget.last_error is None
    assert len(viewer.layers) == n_layers
    assert viewer.layers["smear regions"] is shapes
    assert len(shapes.data) == len(widget.last_result) <= n
    assert len(shapes.features) == len(shapes.data)

    # -- export through the regions CSV writer
    out = tmp_path / "regions.csv"
    widget.export_path.value = str(out)
    widget.export_button.clicked.emit() if hasattr(widget.export_button, "clicked") else widget.export()
    df = read_regions_csv(out)
    assert len(df) == len(shapes.data)
    widget.export()  # never overwrites
    assert "failed" in widget.status.value.lower()


def test_analyze_widget_cancel(make_napari_viewer, qtbot, tiny_models, smear):
    from napari_sickle.widgets.analyze import AnalyzeRBCWidget

    viewer = make_napari_viewer()
    layer = viewer.add_image(smear.image, name="cancel me")
    widget = AnalyzeRBCWidget(viewer)
    widget.device.value = "cpu"
    widget.image.value = layer
    widget.run()
    assert widget.busy
    widget.cancel()
    _wait_idle(qtbot, widget)
    assert "cancel me regions" not in viewer.layers
    assert "cancel me region masks" not in viewer.layers
    assert "Cancelled" in widget.status.value
    assert widget.last_result is None
    # the widget still works after a cancel
    widget.run()
    _wait_idle(qtbot, widget)
    assert "cancel me regions" in viewer.layers


def test_analyze_widget_wrong_checkpoint(make_napari_viewer, qtbot, tiny_models, smear):
    from napari_sickle.widgets.analyze import AnalyzeRBCWidget

    from conftest import tiny_rbc_paths

    viewer = make_napari_viewer()
    layer = viewer.add_image(smear.image, name="s")
    widget = AnalyzeRBCWidget(viewer)
    widget.device.value = "cpu"
    widget.image.value = layer
    det_path, clf_path = tiny_rbc_paths()
    widget.detector.value = str(clf_path)  # a classifier where a detector belongs
    widget.run()
    _wait_idle(qtbot, widget)
    assert widget.last_error is not None
    assert "'detector' model is needed" in str(widget.last_error)
    assert "s regions" not in viewer.layers
