"""GUI tests of "Classify BM cells" in a real viewer."""

import numpy as np
import pandas as pd
import pytest

WBC_CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]


@pytest.fixture(scope="module")
def wbc_stack(fixtures_dir):
    from napari_sickle.io.images import read_image, to_rgb_uint8

    root = fixtures_dir / "wbc-zheng2018"
    table = pd.read_csv(root / "labels.csv")
    return np.stack([to_rgb_uint8(read_image(root / p)) for p in table["image"]]), list(table["class_name"])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A small 4-class WBC model file (untrained weights: the test checks plumbing and alignment)."""
    import torch

    from napari_sickle.models.bm import build_bm_model

    torch.manual_seed(0)
    m = build_bm_model("tiny_resnet", WBC_CLASSES, input_size=64)
    return m.save(tmp_path_factory.mktemp("bm") / "wbc_tiny.pt")


def _widget(make_napari_viewer, ckpt):
    from napari_sickle.widgets.bm import ClassifyBMWidget

    viewer = make_napari_viewer()
    w = ClassifyBMWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.set_checkpoint("bm", ckpt)
    w.device.value = "cpu"
    return viewer, w


def _run(qtbot, w, timeout=60000):
    w.run_button.clicked.emit() if hasattr(w.run_button, "clicked") else w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=timeout)
    assert w.last_error is None, w.last_error


def test_classify_wbc_stack(make_napari_viewer, qtbot, wbc_stack, tiny_checkpoint):
    stack, _ = wbc_stack
    viewer, w = _widget(make_napari_viewer, tiny_checkpoint)
    assert w.target.choices == ("predicted class", *WBC_CLASSES)
    src = viewer.add_image(stack, rgb=True, name="wbc", scale=(1, 0.5, 0.5), translate=(0, 10, 20))
    w.image.value = src
    w.top_k.value = 3
    w.batch_size.value = 2
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    assert w.last_error is None, w.last_error
    heat = viewer.layers["BM heatmap"]
    assert heat.data.shape == stack.shape[:3]  # one heatmap per slice, each the cell's size
    assert tuple(heat.scale) == tuple(src.scale) and tuple(heat.translate) == tuple(src.translate)
    assert heat.colormap.name == "inferno" and heat.blending == "additive" and heat.opacity == pytest.approx(0.5)
    # each slice's heatmap lands exactly on its cell in world coordinates
    for i in range(len(stack)):
        assert np.allclose(heat.data_to_world((i, 0, 0)), src.data_to_world((i, 0, 0)))
        assert np.allclose(heat.data_to_world((i, 119, 119)), src.data_to_world((i, 119, 119)))
        assert 0.0 <= heat.data[i].min() and heat.data[i].max() <= 1.0 and heat.data[i].max() > 0
    res = viewer.layers["BM results"]
    feats = res.features
    assert len(feats) == len(stack) and list(feats["cell"]) == list(range(len(stack)))
    for col in ("prediction", "probability", "top1", "p_top1", "top3", "p_top3", "faithfulness"):
        assert col in feats
    p = w.last_result.probabilities
    assert p.shape == (len(stack), 4) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert list(feats["prediction"]) == [WBC_CLASSES[i] for i in p.argmax(1)]
    assert (feats["p_top1"] >= feats["p_top2"]).all() and (feats["p_top2"] >= feats["p_top3"]).all()
    # the widget table: one row per cell, top-3 text and the faithfulness score
    tv = w.table.to_dataframe()
    assert len(tv) == len(stack) and tv["top-k"].iloc[0].count(";") == 2
    assert list(tv["faithful."]) == [f"{v:+.2f}" for v in feats["faithfulness"]]
    assert list(tv["cell"]) == [str(i + 1) for i in range(len(stack))]  # counted from 1, no index column
    assert w.table.native.verticalHeader().isHidden()
    assert "confidence" in w.faithfulness.value
    # rectangles of the result Shapes layer sit on their slices
    assert [int(round(s[0, 0])) for s in res.data] == list(range(len(stack)))

    # a chosen target class is explained for every cell
    w.target.value = "monocyte"
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    assert list(viewer.layers["BM results"].features["target"]) == ["monocyte"] * len(stack)
    assert len([l for l in viewer.layers if l.name == "BM heatmap"]) == 1  # updated in place


def test_classify_region_from_shapes(make_napari_viewer, qtbot, wbc_stack, tiny_checkpoint):
    stack, _ = wbc_stack
    viewer, w = _widget(make_napari_viewer, tiny_checkpoint)
    smear = np.full((300, 400, 3), 230, np.uint8)
    smear[50:170, 200:320] = stack[1]  # a cell pasted at a known place
    smear[150:270, 20:140] = stack[2]
    img = viewer.add_image(smear, rgb=True, name="smear", scale=(0.25, 0.25), translate=(5, 7))
    # the Shapes layer has its own scale; the region is given in its data coordinates
    shapes = viewer.add_shapes(
        [
            np.array([[50, 200], [170, 320]]) * 0.25 / 0.5 + np.array([5, 7]) / 0.5,
            np.array([[150, 20], [270, 140]]) * 0.25 / 0.5 + np.array([5, 7]) / 0.5,
        ],
        shape_type="rectangle",
        scale=(0.5, 0.5),
        name="regions",
    )
    shapes.selected_data = {0}
    w.image.value = img
    w.regions.value = shapes
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    assert w.last_error is None, w.last_error
    heat = viewer.layers["BM heatmap 1"]
    assert heat.data.shape == (120, 120)
    assert tuple(heat.scale) == tuple(img.scale)
    # heatmap pixel (0, 0) is image pixel (50, 200) in world coordinates
    assert np.allclose(heat.data_to_world((0, 0)), img.data_to_world((50, 200)))
    assert np.allclose(heat.data_to_world((119, 119)), img.data_to_world((169, 319)))
    assert len(viewer.layers["BM results"].features) == 1
    # the classified crop is the pasted cell: same probabilities as classifying it directly
    from napari_sickle.analysis.bm import classify_cells

    direct = classify_cells([stack[1]], str(tiny_checkpoint), device="cpu").probabilities
    assert np.allclose(w.last_result.probabilities, direct, atol=1e-5)
    # nothing selected: every region is classified, each heatmap at its own offset
    shapes.selected_data = set()
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    assert len(viewer.layers["BM results"].features) == 2
    assert np.allclose(viewer.layers["BM heatmap 2"].data_to_world((0, 0)), img.data_to_world((150, 20)))


def test_cancel_mid_stack(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer, w = _widget(make_napari_viewer, tiny_checkpoint)
    rng = np.random.default_rng(0)
    src = viewer.add_image(rng.integers(0, 255, (200, 40, 40), dtype=np.uint8), name="many")
    w.image.value = src
    w.batch_size.value = 1
    w.run()
    qtbot.waitUntil(lambda: w.progress_bar.value >= 2, timeout=60000)
    w.cancel_button.changed.emit(True)
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    assert "Cancelled" in w.status.value
    assert w.last_error is None
    assert "BM heatmap" not in viewer.layers and "BM results" not in viewer.layers


def test_inconsistent_checkpoint_is_a_clear_error(make_napari_viewer, qtbot, tmp_path, tiny_checkpoint):
    import torch

    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["config"]["class_names"] = ["a", "b", "c"]  # head has 4 units
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    viewer, w = _widget(make_napari_viewer, bad)
    src = viewer.add_image(np.zeros((30, 30), np.uint8))
    w.image.value = src
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    assert w.last_error is not None and "4 outputs" in str(w.last_error) and "3 names" in str(w.last_error)
    assert "BM heatmap" not in viewer.layers


def test_no_model_means_no_run(make_napari_viewer, monkeypatch):
    """Without a shipped white-cell model and without a checkpoint the widget never runs an
    untrained head: Run is disabled and the widget says why."""
    from napari_sickle.models import zoo
    from napari_sickle.widgets.bm import ClassifyBMWidget

    monkeypatch.setattr(zoo, "models", lambda task=None: [])
    viewer = make_napari_viewer()
    w = ClassifyBMWidget(viewer)
    viewer.add_image(np.zeros((30, 30, 3), np.uint8))
    assert list(w.model.choice.choices) == ["custom checkpoint…"]
    assert not w.run_button.enabled
    assert "No white-cell model is shipped" in w.status.value
    assert "Matek" in w.model.about.value
    assert w.run() is None and w.last_result is None


def test_shipped_wbc_model_labels_fixture_crops(make_napari_viewer, qtbot, wbc_stack):
    """The shipped default white-cell model names the four fixture crops right, every run."""
    from napari_sickle.models import zoo
    from napari_sickle.widgets.bm import ClassifyBMWidget

    if not zoo.models("wbc"):
        pytest.skip("this installation ships no white-cell model")
    stack, truth = wbc_stack
    viewer = make_napari_viewer()
    w = ClassifyBMWidget(viewer)
    assert w.model.choice.value == zoo.default("wbc").name
    w.device.value = "cpu"
    w.image.value = viewer.add_image(stack, rgb=True, name="wbc")
    answers = []
    for _ in range(2):
        w.run()
        qtbot.waitUntil(lambda: not w.busy, timeout=120000)
        assert w.last_error is None, w.last_error
        answers.append(w.last_result.probabilities.copy())
        assert list(viewer.layers["BM results"].features["prediction"]) == truth
    assert np.array_equal(answers[0], answers[1])
