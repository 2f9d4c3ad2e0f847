"""Take the screenshots of docs/tutorial.md by driving the real widgets in napari
(run from the repository root; needs a display, e.g. xvfb-run, and SICKLE_DATA):

    SICKLE_DATA=../shared/data xvfb-run -a -s "-screen 0 1600x1000x24" \\
        .venv/bin/python docs/tutorial_figures.py [STEP ...]

STEP is any of: analyze (with export), sample, explain, compare, train (default: all). Every widget is
opened from the Plugins menu (``add_plugin_dock_widget``), as a user opens it. Writes
docs/images/tutorial_<step>.png (palette PNGs, kept under 300 KB).
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "images"
SIZE = (1440, 900)


def data_dir() -> Path:
    from napari_sickle._paths import sickle_data_dir

    d = sickle_data_dir()
    if d is None:
        sys.exit("SICKLE_DATA is not set and ../shared/data does not exist")
    return d / "fixtures"


def wait(widget, timeout=900):
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    t0 = time.time()
    while widget.busy:
        app.processEvents()
        time.sleep(0.05)
        if time.time() - t0 > timeout:
            raise TimeoutError(widget.status.value)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    if widget.last_error is not None:
        raise RuntimeError(widget.last_error)


def new_viewer():
    import napari

    v = napari.Viewer(show=True)
    v.window._qt_window.resize(*SIZE)
    return v


def save(viewer, name: str) -> Path:
    """Screenshot of the whole window as a palette PNG."""
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    for _ in range(10):
        QApplication.instance().processEvents()
        time.sleep(0.03)
    img = Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)[..., :3])
    path = OUT / f"tutorial_{name}.png"
    for colors in (192, 128, 96, 64):
        img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size < 290_000:
            break
    print(f"{path}: {path.stat().st_size / 1e3:.0f} KB")
    return path


def open_widget(viewer, name):
    return viewer.window.add_plugin_dock_widget("napari-sickle", name)[1]


def zoom_100(viewer, layer, centre=None):
    """1 image pixel = 1 screen pixel, centred on ``centre`` (row, col) of ``layer``."""
    h, w = layer.data.shape[:2]
    viewer.camera.zoom = 1.0 / float(layer.scale[-1])
    viewer.camera.center = tuple(layer.data_to_world(centre if centre is not None else (h / 2, w / 2)))


def analyze(fx: Path, export: bool = False):
    """A Chula RBC-12 smear (640x480, Wright stain, about 45 px per cell) at 100 % zoom."""
    smear = fx / "chula-rbc12" / "Dataset" / "100.jpg"
    v = new_viewer()
    v.open(str(smear), plugin="napari-sickle")
    image = v.layers[0]
    w = open_widget(v, "Analyze RBC smear")
    w.device.value = "cpu"
    w.image.value = image
    w.run()
    wait(w)
    zoom_100(v, image)
    save(v, "analyze")
    if export:
        out = Path(tempfile.mkdtemp()) / f"{image.name}_regions.csv"
        w.export_path.value = str(out)
        w.export()
        print(w.status.value)
        v.layers.selection.active = v.layers[f"{image.name} · RBC types"]
        save(v, "export")
    v.close()


def analyze_sample():
    """The simulated sample smear (File > Open Sample), analysed with the shipped default; its
    ground-truth layers hidden, 100 % zoom on the top-left corner."""
    v = new_viewer()
    v.open_sample("napari-sickle", "smear")
    image = v.layers[0]
    for layer in list(v.layers)[1:]:
        layer.visible = False
    w = open_widget(v, "Analyze RBC smear")
    w.device.value = "cpu"
    w.image.value = image
    w.run()
    wait(w)
    print(w.status.value)
    zoom_100(v, image, (300, 420))
    save(v, "analyze_sample")
    v.close()


def explain(fx: Path):
    """A white cell of a BCCD smear, boxed by its VOC annotation, classified and explained."""
    from napari_sickle.io.formats import read_voc
    from napari_sickle.models import zoo

    if not zoo.models("wbc"):
        print("explain: skipped, this installation ships no white-cell model")
        return
    smear = fx / "bccd" / "JPEGImages" / "BloodImage_00000.jpg"
    boxes = read_voc(fx / "bccd" / "Annotations" / "BloodImage_00000.xml")
    wbc = boxes[boxes["class"] == "WBC"].iloc[0]
    v = new_viewer()
    v.open(str(smear), plugin="napari-sickle")
    image = v.layers[0]
    for layer in list(v.layers)[1:]:
        v.layers.remove(layer)
    x0, y0, x1, y1 = (float(wbc[c]) for c in ("x_min", "y_min", "x_max", "y_max"))
    pad = 8
    shapes = v.add_shapes(
        [np.array([[y0 - pad, x0 - pad], [y1 + pad, x1 + pad]])],
        shape_type="rectangle",
        name="white cell",
        edge_color="yellow",
        face_color="transparent",
        edge_width=2,
    )
    w = open_widget(v, "Classify BM cells")
    w.device.value = "cpu"
    w.image.value = image
    w.regions.value = shapes
    w.top_k.value = 3
    w.run()
    wait(w)
    print(w.status.value)
    shapes.visible = False
    zoom_100(v, image, ((y0 + y1) / 2, (x0 + x1) / 2 + 120))
    save(v, "explain")
    v.close()


def compare(fx: Path):
    from napari_sickle.io.masks import read_mask

    img = fx / "bbbc041seg" / "002f20ad_img.png"
    v = new_viewer()
    v.open(str(img), plugin="napari-sickle")
    image = v.layers[0]
    gt = v.add_labels(
        read_mask(fx / "bbbc041seg" / "002f20ad_mask.png").astype(np.int32), name="ground truth", opacity=0.6
    )
    gt.contour = 1
    gt.visible = False
    w = open_widget(v, "Compare segmentations")
    w.device.value = "cpu"
    w.image.value = image
    w.ground_truth.value = gt
    w.run()
    wait(w)
    print(w.status.value)
    for m in ("connected_components", "watershed"):
        v.layers[f"{image.name} · {m}"].visible = False
    zoom_100(v, image)
    save(v, "compare")
    v.close()


def train(fx: Path):
    """A short U-Net run on the two BBBC041 fixture crops (a folder of image/mask pairs), then
    Load into analysis widgets."""
    from qtpy.QtWidgets import QApplication

    v = new_viewer()
    v.open(str(fx / "bbbc041seg" / "002f20ad_img.png"), plugin="napari-sickle")
    seg_dock, seg = v.window.add_plugin_dock_widget("napari-sickle", "Compare segmentations")
    seg.use_unet.value = False
    w = open_widget(v, "Train models")
    w.kind.value = "unet"
    w.source.value = "folder or CSV"
    w.data_path.value = fx / "bbbc041seg"
    w.epochs.value = 8
    w.threads.value = 2
    w.extra_options.value = "steps_per_epoch=4 val_every=2"
    w.out_dir.value = Path(tempfile.mkdtemp()) / "unet-run"
    w.train()
    app = QApplication.instance()
    t0 = time.time()
    while w.running and time.time() - t0 < 900:
        app.processEvents()
        time.sleep(0.05)
    print(w.status.value, w._stderr[-500:] if w.returncode else "")
    w.load_into_analysis()
    print(w.status.value, "U-Net ticked:", seg.use_unet.value, seg.unet.file("unet"))
    v.window.remove_dock_widget(seg_dock)  # the picture shows the training widget alone
    v.window._qt_window.resize(*SIZE)
    save(v, "train")
    v.close()


def main(argv=None):
    steps = list(argv if argv is not None else sys.argv[1:]) or ["analyze", "sample", "explain", "compare", "train"]
    fx = data_dir()
    OUT.mkdir(exist_ok=True)
    for step in steps:
        if step in ("analyze", "export"):
            analyze(fx, export=True)
        elif step == "sample":
            analyze_sample()
        elif step == "explain":
            explain(fx)
        elif step == "compare":
            compare(fx)
        elif step == "train":
            train(fx)
        else:
            sys.exit(f"unknown step {step!r}")


if __name__ == "__main__":
    main()
