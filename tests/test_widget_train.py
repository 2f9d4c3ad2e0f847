"""The training dock widget drives a real training subprocess on tiny simulated data:
it starts, the loss/metric plot updates, Stop keeps a loadable checkpoint, Resume
continues, and the model loads into the open analysis widget."""

import numpy as np
import pytest

# a tiny simulated set: one 256x384 smear, an untrained 32-px backbone (no weights to load)
TINY = "n_smears=1 smear_shape=(256,384) pretrained=False input_size=32 batch_size=16"


@pytest.fixture
def widgets(make_napari_viewer):
    from napari_sickle.widgets.analyze import AnalyzeRBCWidget
    from napari_sickle.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    analyze = AnalyzeRBCWidget(viewer)
    viewer.window.add_dock_widget(analyze, name="Analyze RBC smear")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train models")
    return viewer, train, analyze


def test_train_stop_resume_and_load(widgets, qtbot, tmp_path):
    from napari_sickle.models.checkpoint import load_checkpoint

    viewer, w, analyze = widgets
    out = tmp_path / "run"
    w.kind.value = "multilabel"
    w.source.value = "simulated"
    assert w.data_path.native.isHidden()
    w.out_dir.value = out
    w.epochs.value = 500  # long enough that Stop interrupts it
    w.threads.value = 1
    w.extra_options.value = TINY
    assert not w.load_button.enabled

    w.run_button.changed.emit(True)
    assert w.running and not w.run_button.enabled and w.cancel_button.enabled
    qtbot.waitUntil(lambda: any(e["event"] == "checkpoint" and e["which"] == "last" for e in w.events), timeout=180_000)
    # the live plot shows the epoch's loss and metric
    assert len(w.ax_loss.lines) >= 1 and len(w.ax_loss.lines[0].get_xdata()) >= 1
    assert len(w.ax_metric.lines) == 1
    assert w.ax_metric.get_ylabel() == w.history[-1]["metric_name"]

    w.cancel_button.changed.emit(True)  # Stop
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert w.result is None and w.returncode != 0
    assert w.status.value.startswith("Stopped")
    stopped_at = load_checkpoint(out / "last.pt", kind="multilabel")["extra"]["epoch"] + 1
    assert 1 <= stopped_at < 500
    assert load_checkpoint(out / "best.pt", kind="multilabel")["state_dict"]
    assert w.resume_button.enabled and w.load_button.enabled

    # Resume continues from last.pt to a new, short total
    w.epochs.value = stopped_at + 1
    w.resume_button.changed.emit(True)
    qtbot.waitUntil(lambda: not w.running and w.returncode is not None, timeout=180_000)
    assert w.returncode == 0, w._stderr[-2000:]
    assert w.result is not None and w.history[-1]["epoch"] == stopped_at + 1
    assert w.events[0]["event"] == "start" and w.events[0]["resume"] == str(out / "last.pt")
    assert w.status.value.startswith("Done")

    # Load into analysis widgets sets the classifier checkpoint of the open AnalyzeRBCWidget
    assert w.load_button.enabled
    w.load_button.changed.emit(True)
    assert str(analyze.classifier.value) == str(out / "best.pt") and analyze.model.is_custom
    assert w.status.value == "Loaded into Analyze RBC smear"


def test_viewer_layers_export_to_dataset(widgets, tmp_path):
    """Data from the viewer: an Image plus a Labels layer becomes an images/+masks/ dataset."""
    viewer, w, _ = widgets
    img = np.zeros((40, 50, 3), np.uint8)
    lab = np.zeros((40, 50), np.int32)
    lab[5:15, 5:15] = 1
    viewer.add_image(img, name="smear")
    viewer.add_labels(lab, name="cells")
    w.kind.value = "unet"
    w.source.value = "viewer layers"
    assert not w.image_layer.native.isHidden() and not w.annotation_layer.native.isHidden()
    assert w.data_path.native.isHidden()
    w.image_layer.value = viewer.layers["smear"]
    w.annotation_layer.value = viewer.layers["cells"]
    w.out_dir.value = tmp_path / "o"
    args = w.command()
    data = args[args.index("--data") + 1]
    from napari_sickle.io.datasets import scan_image_mask_pairs
    from napari_sickle.io.masks import read_mask

    pairs = scan_image_mask_pairs(data)
    assert len(pairs) == 1
    assert read_mask(pairs["mask"][0]).sum() == 100

    # boxes with the six type columns become a multi-label table
    import pandas as pd

    from napari_sickle.constants import RBC_TYPES
    from napari_sickle.io.datasets import read_multilabel_table

    feats = pd.DataFrame({t: [1, 0] for t in RBC_TYPES})
    viewer.add_shapes(
        [np.array([[2, 2], [2, 12], [12, 12], [12, 2]]), np.array([[20, 20], [20, 30], [30, 30], [30, 20]])],
        shape_type="rectangle",
        features=feats,
        name="boxes",
    )
    w.kind.value = "multilabel"
    w.annotation_layer.value = viewer.layers["boxes"]
    args = w.command()
    table = read_multilabel_table(args[args.index("--data") + 1])
    assert len(table) == 2 and table["oval_disc"].tolist() == [1, 0]
