"""GUI: the Compare segmentations widget in a real viewer on a simulated smear with ground truth."""

import numpy as np
import pytest

from napari_sickle.analysis.seg_metrics import segmentation_metrics

from conftest import _sim_small, _tiny_unet

HEAD = {"watershed": "watershed", "unet": "U-Net", "connected_components": "conn. comp."}


def _table(w) -> dict:
    """{method: {metric row: text}} from the widget's metrics table (methods are columns)."""
    df = w.table.to_dataframe()
    return {m: dict(zip(df.index, df[h])) for m, h in HEAD.items() if h in df.columns}


def _run(widget, qtbot, timeout=120_000):
    widget.last_result = None
    widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def test_compare_widget_layers_metrics_and_rerun(make_napari_viewer, qtbot):
    from napari_sickle.widgets.segment import CompareSegmentationWidget

    sm = _sim_small()
    viewer = make_napari_viewer()
    img_layer = viewer.add_image(sm.image, name="smear", scale=(0.5, 0.5))
    gt_layer = viewer.add_labels(sm.instances, name="truth", scale=(0.5, 0.5))
    w = CompareSegmentationWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.image.value = img_layer
    w.ground_truth.value = gt_layer
    w.use_unet.value = False
    assert w.set_checkpoint("unet", _tiny_unet())
    assert w.use_unet.value and w.unet.is_custom  # a U-Net handed over is also ticked
    w.device.value = "cpu"
    _run(w, qtbot)
    assert w.last_error is None, w.last_error
    res = w.last_result
    assert res is not None
    for m in ("watershed", "unet", "connected_components"):
        layer = viewer.layers[f"smear · {m}"]
        assert layer._type_string == "labels"
        assert layer.contour > 0  # outlines: the cells stay visible
        assert layer.data.shape == sm.instances.shape
        assert tuple(layer.scale) == (0.5, 0.5)  # results land on the input image's grid
        # the table shows the same numbers as the metric code on the layer's data
        met = segmentation_metrics(layer.data, sm.instances)
        rowd = _table(w)[m]
        assert float(rowd["Dice (foreground)"]) == pytest.approx(met.dice, abs=1e-3)
        assert float(rowd["F1 at IoU 0.5 (cells)"]) == pytest.approx(met.instance_f1_50, abs=1e-3)
        assert rowd["merged (2+ cells)"] == str(met.merges) and rowd["split cells"] == str(met.splits)
        assert rowd["objects found"] == str(met.count_pred)
        assert all("e-" not in v and not v.endswith(".0") for v in rowd.values())  # numbers for people
    ws = res.metrics["watershed"]
    cc = res.metrics["connected_components"]
    assert ws.dice > 0.9 and ws.instance_f1_50 > cc.instance_f1_50 and cc.merges >= 1
    merged = viewer.layers["smear · merged cells"]
    assert merged._type_string == "points"
    total_merges = sum(m.merges for m in res.metrics.values())
    assert len(merged.data) == total_merges
    assert set(merged.features["method"]) <= set(res.labels)
    assert "connected_components" in set(merged.features["method"])
    assert (merged.features["n_true_cells"] >= 2).all()
    # markers do not hide the cells: hollow circles wider than the merged object
    assert np.allclose(np.asarray(merged.face_color)[:, 3], 0)
    lab = res.labels[merged.features["method"].iloc[0]]
    obj = lab[tuple(np.round(merged.data[0]).astype(int))]
    diameter = 2 * np.sqrt((lab == obj).sum() / np.pi)
    assert merged.size[0] > diameter
    # bar chart drawn: one axis with bars for dice / iou / f1
    ax = w._figure.axes[0]
    assert len(ax.patches) == 3 * 3

    # re-run with other parameters: layers are updated in place, not piled up
    n_layers = len(viewer.layers)
    old = viewer.layers["smear · watershed"]
    w.use_unet.value = False
    w.min_distance.value = 4
    _run(w, qtbot)
    assert w.last_error is None, w.last_error
    assert len(viewer.layers) == n_layers
    assert viewer.layers["smear · watershed"] is old
    assert np.array_equal(old.data, w.last_result.labels["watershed"])
    assert list(w.table.to_dataframe().columns) == ["watershed", "conn. comp."]


def test_compare_widget_bad_ground_truth_and_cancel(make_napari_viewer, qtbot, tmp_path):
    import imageio.v3 as iio

    from napari_sickle.widgets.segment import CompareSegmentationWidget

    sm = _sim_small()
    viewer = make_napari_viewer()
    viewer.add_image(sm.image, name="smear")
    w = CompareSegmentationWidget(viewer)
    # a ground-truth mask file of another size: a clear error, no layers added
    bad = tmp_path / "mask.png"
    iio.imwrite(bad, np.zeros((50, 60), np.uint8) + 255 * (np.arange(60) > 30).astype(np.uint8))
    w.gt_file.value = bad
    _run(w, qtbot)
    assert isinstance(w.last_error, ValueError)
    assert "same size" in str(w.last_error)
    assert "smear · watershed" not in viewer.layers
    # U-Net without a model: Run is disabled and the status says why
    w.gt_file.value = ""
    w.use_unet.value = True
    w.unet.choice.value = "custom checkpoint…"
    assert not w.run_button.enabled and "U-Net" in w.status.value
    w.run()
    assert not w.busy and "checkpoint" in w.status.value
    # cancel: nothing is added
    w.use_unet.value = False
    w.run()
    w.cancel()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert "Cancel" in w.status.value
    assert "smear · watershed" not in viewer.layers
