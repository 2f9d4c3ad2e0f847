"""GUI: the Compare segmentations widget in a real viewer on a simulated smear with ground truth."""
import numpy as np
import pytest

from napari_sickle.analysis.seg_metrics import segmentation_metrics

from conftest import _sim_small, _tiny_unet


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
    w.use_unet.value = True
    w.unet_model.value = _tiny_unet()
    w.device.value = "cpu"
    _run(w, qtbot)
    assert w.last_error is None, w.last_error
    res = w.last_result
    assert res is not None
    for m in ("watershed", "unet", "connected_components"):
        layer = viewer.layers[f"smear · {m}"]
        assert layer._type_string == "labels"
        assert layer.data.shape == sm.instances.shape
        assert tuple(layer.scale) == (0.5, 0.5)  # results land on the input image's grid
        # the table shows the same numbers as the metric code on the layer's data
        met = segmentation_metrics(layer.data, sm.instances)
        df = w.table.to_dataframe()
        rowd = df[df["method"] == m].iloc[0]
        assert rowd["dice"] == pytest.approx(met.dice, abs=1e-3)
        assert rowd["f1_50"] == pytest.approx(met.instance_f1_50, abs=1e-3)
        assert rowd["merges"] == met.merges and rowd["splits"] == met.splits
        assert rowd["count"] == met.count_pred
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
    assert list(w.table.to_dataframe()["method"]) == ["watershed", "connected_components"]


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
    # U-Net without a model: told, nothing runs
    w.gt_file.value = ""
    w.use_unet.value = True
    w.run()
    assert not w.busy and "model" in w.status.value
    # cancel: nothing is added
    w.use_unet.value = False
    w.run()
    w.cancel()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert "Cancel" in w.status.value
    assert "smear · watershed" not in viewer.layers
