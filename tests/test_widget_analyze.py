"""GUI test: the 'Analyze RBC smear' widget in a real viewer with tiny models registered as the
default shipped RBC model (``tiny_zoo``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sickle.constants import RBC_TYPES


@pytest.fixture(scope="module")
def tiny_models(tiny_rbc_models):
    return tiny_rbc_models


R, M, T = "smear · RBC regions", "smear · RBC outlines", "smear · RBC types"


@pytest.fixture(scope="module")
def smear():
    from napari_sickle.data.simulate import simulate_smear

    return simulate_smear(seed=21, shape=(320, 480))


def _wait_idle(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def test_analyze_widget_end_to_end(make_napari_viewer, qtbot, tiny_models, tiny_zoo, smear, tmp_path):
    from napari_sickle.io.formats import read_regions_csv
    from napari_sickle.widgets.analyze import AnalyzeRBCWidget

    viewer = make_napari_viewer()
    src = viewer.add_image(smear.image, name="smear", scale=(0.5, 0.5), translate=(10, 20))
    other = viewer.add_image(np.zeros((50, 60), np.uint8), name="other")
    widget = AnalyzeRBCWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device.value = "cpu"
    widget.image.value = src
    assert widget.model.choice.value == "rbc-tiny-test"
    assert "tiny test models" in widget.model.about.value

    # -- run, then switch layers while it works: results land on the starting layer
    widget.run_button.clicked.emit() if hasattr(widget.run_button, "clicked") else widget.run()
    assert widget.busy
    viewer.layers.selection.active = other
    widget.image.value = other
    _wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert R in viewer.layers and M in viewer.layers and T in viewer.layers
    assert "other · RBC regions" not in viewer.layers
    shapes, labels = viewer.layers[R], viewer.layers[M]
    n = len(shapes.data)
    assert n > 0 and n == len(widget.last_result)
    feats = shapes.features
    for col in ["score", "p_abnormal", "abnormal", "label", "code"] + [f"p_{t}" for t in RBC_TYPES] + list(RBC_TYPES):
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
    # outlines, not filled masks; one type-code badge per region
    assert labels.contour > 0
    codes = viewer.layers[T]
    assert len(codes.data) == n and list(codes.features["code"]) == list(feats["code"])
    assert np.allclose(codes.data, [s[0] for s in shapes.data])  # at each box's top-left corner
    # summary table: named rows that say they count regions
    table = widget.summary.to_dataframe()
    rows = dict(zip(table.index, table["regions"]))
    assert int(rows["regions (cells or clumps)"]) == n and "SCD screening" in rows
    assert "Codes: D Oval/Disc" in widget.legend.value

    # -- colour by type
    before = np.array(shapes.edge_color)
    widget.color_by.value = "type"
    after = np.array(shapes.edge_color)
    assert after.shape == before.shape
    assert np.allclose(np.array(codes.border_color), after)
    assert "most probable type" in widget.legend.value

    # -- re-run updates the same layers in place
    n_layers = len(viewer.layers)
    widget.image.value = src
    widget.score_threshold.value = 0.9
    widget.run()
    _wait_idle(qtbot, widget)
    assert widget.last_error is None
    assert len(viewer.layers) == n_layers
    assert viewer.layers[R] is shapes
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


def test_analyze_widget_cancel(make_napari_viewer, qtbot, tiny_models, tiny_zoo, smear):
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
    assert "cancel me · RBC regions" not in viewer.layers
    assert "cancel me · RBC outlines" not in viewer.layers
    assert "Cancelled" in widget.status.value
    assert widget.last_result is None
    # the widget still works after a cancel
    widget.run()
    _wait_idle(qtbot, widget)
    assert "cancel me · RBC regions" in viewer.layers


def test_analyze_widget_wrong_checkpoint(make_napari_viewer, qtbot, tiny_models, tiny_zoo, smear):
    from napari_sickle.widgets.analyze import AnalyzeRBCWidget

    from conftest import tiny_rbc_paths

    viewer = make_napari_viewer()
    layer = viewer.add_image(smear.image, name="s")
    widget = AnalyzeRBCWidget(viewer)
    widget.device.value = "cpu"
    widget.image.value = layer
    det_path, clf_path = tiny_rbc_paths()
    widget.set_checkpoint("detector", clf_path)  # a classifier where a detector belongs
    assert widget.model.is_custom and widget.run_button.enabled
    widget.run()
    _wait_idle(qtbot, widget)
    assert widget.last_error is not None
    assert "'detector' model is needed" in str(widget.last_error)
    assert "s · RBC regions" not in viewer.layers


def test_analyze_widget_run_needs_valid_inputs(make_napari_viewer, tiny_zoo, tmp_path):
    """Run is disabled, with the reason shown, until an image and a usable model are chosen."""
    from napari_sickle.widgets.analyze import AnalyzeRBCWidget

    viewer = make_napari_viewer()
    widget = AnalyzeRBCWidget(viewer)
    assert not widget.run_button.enabled and "image" in widget.status.value
    viewer.add_image(np.zeros((40, 40, 3), np.uint8), name="x")
    assert widget.run_button.enabled
    widget.model.choice.value = "custom checkpoint…"
    widget.detector.value = str(tmp_path / "missing.pt")
    assert not widget.run_button.enabled and "not found" in widget.status.value
    widget.model.choice.value = "rbc-tiny-test"
    assert widget.run_button.enabled


def test_analyze_widget_no_regions_says_why(make_napari_viewer, qtbot, tiny_models, tiny_zoo):
    from napari_sickle.widgets.analyze import AnalyzeRBCWidget

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.full((200, 300, 3), 235, np.uint8), name="blank")
    widget = AnalyzeRBCWidget(viewer)
    widget.device.value = "cpu"
    widget.image.value = layer
    widget.run()
    _wait_idle(qtbot, widget)
    assert widget.last_error is None
    assert "No regions found" in widget.status.value and "tiny test models" in widget.status.value


@pytest.mark.parametrize("case", ["uncertain", "lightness matched", "sure"])
def test_analyze_widget_warns_when_the_types_are_uncertain(make_napari_viewer, qtbot, tiny_zoo, monkeypatch, case):
    """A smear whose type calls are uncertain (a camera unlike the training images), or were
    read only after matching its cell lightness, gets a notification and no SCD call; a smear
    read surely gets neither."""
    from napari_sickle.analysis.smear import finish_result
    from napari_sickle.widgets import analyze

    class _Abnormal:
        def abnormal_proba(self, probs):
            return np.zeros(len(probs))

    n = 30
    probs = np.zeros((n, 6), np.float32)
    probs[:, 0] = 0.98
    if case == "uncertain":
        probs[:, 4] = 0.45  # Echinocyte near 0.5 in every region
        probs[:, 1] = 0.3
    boxes = np.array([[10 * i, 0, 10 * i + 8, 8] for i in range(n)], np.float32)

    def fake_run(image, **_kw):
        return finish_result(
            image.shape, boxes, np.ones(n), probs, _Abnormal(), lightness_matched=case == "lightness matched"
        )

    seen = []
    monkeypatch.setattr(analyze, "_run_analysis", fake_run)
    monkeypatch.setattr(analyze, "notify", lambda msg, level="warning": seen.append(msg))
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.full((20, 320, 3), 200, np.uint8), name="smear")
    widget = analyze.AnalyzeRBCWidget(viewer)
    widget.device.value = "cpu"
    widget.image.value = layer
    widget.run()
    _wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    rows = dict(zip(widget.summary.to_dataframe().index, widget.summary.to_dataframe()["regions"]))
    assert float(rows["type uncertainty"]) == pytest.approx(widget.last_result.summary["type_uncertainty"], abs=0.005)
    assert rows["cell lightness matched"] == ("yes" if case == "lightness matched" else "no")
    if case == "uncertain":
        assert rows["SCD screening"] == "inconclusive" and "type calls uncertain" in widget.status.value
        assert len(seen) == 1 and "uncertain on this smear" in seen[0]
    elif case == "lightness matched":
        assert rows["SCD screening"] == "inconclusive" and "lightness matched" in widget.status.value
        assert len(seen) == 1 and "lightness matched" in seen[0]
    else:
        assert rows["SCD screening"] == "negative" and not seen
