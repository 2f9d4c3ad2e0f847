"""Every contributed widget opens the way a user opens it (Plugins menu -> npe2 -> napari's
dependency injection) and runs once on the sample smear."""

import numpy as np
import pytest

from napari_sickle.models import zoo

PLUGIN = "napari-sickle"
WIDGETS = ("Analyze RBC smear", "Classify BM cells", "Compare segmentations", "Train models")
# a tiny multilabel run: untrained 32-px backbone, one epoch
TINY = "pretrained=False input_size=32 batch_size=16"


def _open(viewer, name):
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    assert dock is not None and widget is not None
    return widget


def _run(qtbot, widget, timeout=300_000):
    assert widget.run_button.enabled, widget.status.value
    widget.run_button.changed.emit(True)
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)
    assert widget.last_error is None, widget.last_error


@pytest.fixture
def sample(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "smear")
    image, cells, regions = list(viewer.layers)
    return viewer, image, cells, regions


def test_manifest_lists_the_four_widgets():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    names = [w.display_name for w in pm.get_manifest(PLUGIN).contributions.widgets]
    assert sorted(names) == sorted(WIDGETS)


def test_all_widgets_open_from_the_plugins_menu(make_napari_viewer):
    from napari_sickle.widgets._base import same_viewer

    viewer = make_napari_viewer()
    for name in WIDGETS:
        w = _open(viewer, name)
        assert w.display_name == name
        assert same_viewer(w._viewer, viewer)  # this viewer was injected


def test_analyze_from_menu_keeps_ground_truth(sample, qtbot):
    viewer, image, cells, regions = sample
    gt = {
        "regions": ([np.array(d) for d in regions.data], regions.features.copy(), regions.name),
        "cells": (np.array(cells.data), cells.features.copy(), cells.name),
    }
    inputs = {layer.name for layer in viewer.layers}
    w = _open(viewer, "Analyze RBC smear")
    default = zoo.default("rbc")
    # the model dropdown lists the shipped models and says what the chosen one was trained on
    assert w.model.choice.value == default.name
    assert list(w.model.choice.choices)[-1] == "custom checkpoint…"
    assert default.description in w.model.about.value
    w.device.value = "cpu"
    assert w.image.value is image
    _run(qtbot, w)

    new = [layer for layer in viewer.layers if layer.name not in inputs]
    assert {layer.name for layer in new}.isdisjoint(inputs)
    shapes = viewer.layers[f"{image.name} · RBC regions"]
    outlines = viewer.layers[f"{image.name} · RBC outlines"]
    codes = viewer.layers[f"{image.name} · RBC types"]
    assert len(shapes.data) == len(w.last_result) > 0
    assert outlines.contour > 0  # outlines, not filled masks
    assert len(codes.data) == len(shapes.data) and set(codes.features["code"]) - {"?"}
    assert "region" in w.status.value and "abnormal" in w.status.value
    # the sample's ground truth is untouched
    assert len(regions.data) == len(gt["regions"][0])
    assert all(np.array_equal(a, b) for a, b in zip(regions.data, gt["regions"][0]))
    assert regions.features.equals(gt["regions"][1]) and regions.name == gt["regions"][2]
    assert np.array_equal(cells.data, gt["cells"][0]) and cells.features.equals(gt["cells"][1])
    # the summary table's rows are named (no pandas row numbers) and say what they count
    headers = [w.summary.native.verticalHeaderItem(i).text() for i in range(w.summary.native.rowCount())]
    assert headers[0].startswith("regions")
    # a second run starts its progress from zero and updates the same layers
    n_layers = len(viewer.layers)
    w.run_button.changed.emit(True)
    assert w.progress_bar.value == 0
    assert w._nprogress is not None  # a bar in napari's activity dock while it runs
    qtbot.waitUntil(lambda: not w.busy, timeout=300_000)
    assert w._nprogress is None
    assert w.progress_bar.value == w.progress_bar.max
    assert len(viewer.layers) == n_layers


def test_analyze_output_never_overwrites_an_input_named_like_it(make_napari_viewer, qtbot):
    """A user layer that already carries the output name is left alone."""
    from napari_sickle.data.simulate import simulate_smear

    viewer = make_napari_viewer()
    sm = simulate_smear(seed=3, shape=(256, 320))
    viewer.add_image(sm.image, name="s")
    mine = viewer.add_shapes([np.array([[1, 1], [1, 9], [9, 9], [9, 1]], float)], name="s · RBC regions")
    w = _open(viewer, "Analyze RBC smear")
    w.device.value = "cpu"
    w.image.value = viewer.layers["s"]
    _run(qtbot, w)
    assert len(mine.data) == 1
    assert "s · RBC regions (2)" in viewer.layers


def _tiny_bm_checkpoint(tmp_path):
    import torch

    from napari_sickle.models.bm import build_bm_model

    torch.manual_seed(0)
    m = build_bm_model("tiny_resnet", ["eosinophil", "lymphocyte", "monocyte", "neutrophil"], input_size=64)
    return m.save(tmp_path / "bm_tiny.pt")


def test_bm_from_menu(sample, qtbot, tmp_path):
    viewer, image, cells, regions = sample
    w = _open(viewer, "Classify BM cells")
    shipped = zoo.models("wbc")
    if shipped:
        assert w.model.choice.value == shipped[0].name and shipped[0].description in w.model.about.value
        assert w.run_button.enabled
    else:  # never an untrained head: without a shipped model the user must choose a file
        assert list(w.model.choice.choices) == ["custom checkpoint…"]
        assert not w.run_button.enabled and "No white-cell model is shipped" in w.status.value
        assert w.set_checkpoint("bm", _tiny_bm_checkpoint(tmp_path))
    assert "Matek" in (w.model.about.value + w.matek_note.value)
    w.device.value = "cpu"
    w.image.value = image
    regions.selected_data = {0, 1, 2}
    w.regions.value = regions
    _run(qtbot, w)
    assert len(viewer.layers["BM results"].features) == 3
    assert w.table.native.rowCount() == 3 and w.table.native.verticalHeader().isHidden()


def test_compare_from_menu_with_shipped_unet(sample, qtbot):
    viewer, image, cells, regions = sample
    w = _open(viewer, "Compare segmentations")
    assert zoo.models("unet"), "a U-Net is shipped"
    assert w.use_unet.value and w.unet.choice.value == zoo.default("unet").name
    w.device.value = "cpu"
    w.image.value = image
    w.ground_truth.value = cells
    _run(qtbot, w)
    assert set(w.last_result.labels) == {"watershed", "unet", "connected_components"}
    for m in ("watershed", "unet", "connected_components"):
        assert viewer.layers[f"{image.name} · {m}"].contour > 0
    q = w.table.native
    assert [q.horizontalHeaderItem(i).text() for i in range(q.columnCount())] == ["watershed", "U-Net", "conn. comp."]
    cells_text = [q.item(r, c).text() for r in range(q.rowCount()) for c in range(q.columnCount())]
    assert not any("e-" in t or "e+" in t for t in cells_text)
    assert "CompareSegmentationWidget" not in w.status.value


def test_train_from_menu_on_the_sample_and_load(sample, qtbot, tmp_path):
    viewer, image, cells, regions = sample
    analyze = _open(viewer, "Analyze RBC smear")
    segment = _open(viewer, "Compare segmentations")
    w = _open(viewer, "Train models")
    assert not w.run_button.enabled  # no data chosen yet
    w.train()
    assert str(w.out_dir.value) in ("", ".")  # an invalid click fills in nothing
    w.kind.value = "multilabel"
    w.source.value = "viewer layers"
    w.image_layer.value = image
    w.annotation_layer.value = regions
    w.epochs.value = 1
    w.threads.value = 1
    w.extra_options.value = TINY
    w.out_dir.value = tmp_path / "run"
    assert w.run_button.enabled
    w.run_button.changed.emit(True)
    qtbot.waitUntil(lambda: not w.running and w.returncode is not None, timeout=300_000)
    assert w.returncode == 0, w._stderr[-2000:]
    assert w.status.value.startswith("Done")
    loaded = w.load_into_analysis()
    assert loaded == ["Analyze RBC smear"]
    assert analyze.model.is_custom and analyze.model.file("classifier") == str(tmp_path / "run" / "best.pt")
    assert "Analyze RBC smear" in w.status.value
    # a U-Net checkpoint goes to Compare segmentations with its box ticked
    segment.use_unet.value = False
    unet = str(zoo.resolve(None, "unet", "unet"))
    assert w.load_into_analysis(unet) == ["Compare segmentations"]
    assert segment.use_unet.value and segment.unet.file("unet") == unet
