"""Open files through a real napari viewer with the plugin, save layers back with its writers."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_sickle.constants import RBC_TYPES


def test_open_and_save_through_viewer(make_napari_viewer, fixtures_dir, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(fixtures_dir / "bbbc041seg"), plugin="napari-sickle")
    assert [type(l).__name__ for l in viewer.layers] == ["Image", "Labels"]
    image, labels = viewer.layers
    assert image.rgb and image.data.shape == (2, 512, 512, 3)
    assert labels.data.shape == (2, 512, 512) and {"area", "x_min", "slice"} <= set(labels.features.columns)

    viewer.open(str(fixtures_dir / "bccd" / "Annotations" / "BloodImage_00001.xml"), plugin="napari-sickle")
    shapes = viewer.layers[-1]
    assert type(shapes).__name__ == "Shapes" and len(shapes.data) == len(shapes.features) > 0
    assert set(shapes.shape_type) == {"rectangle"} and "class" in shapes.features

    viewer.open(str(fixtures_dir / "chula-rbc12" / "Label" / "1.txt"), plugin="napari-sickle")
    points = viewer.layers[-1]
    assert type(points).__name__ == "Points" and len(points.data) == 117
    assert points.features["class"].value_counts()["ovalocyte"] == 5

    viewer.open(str(fixtures_dir / "wbc-zheng2018"), plugin="napari-sickle")
    crops = viewer.layers[-1]
    assert crops.data.shape == (4, 120, 120, 3) and crops.metadata["classes"][3] == "eosinophil"
    n_layers = len(viewer.layers)

    # a claimed file that cannot be read: a clear error, nothing else lost
    (tmp_path / "zero_mask.png").write_bytes(b"")
    with pytest.raises(Exception, match=r"zero_mask\.png.*0 bytes"):
        viewer.open(str(tmp_path / "zero_mask.png"), plugin="napari-sickle")
    assert len(viewer.layers) == n_layers

    # writers: Labels -> PNG, Shapes -> regions CSV; both re-open through the plugin
    viewer.layers.selection = {labels}
    lab2d = viewer.add_labels(labels.data[0], name="slice0")
    viewer.layers.selection = {lab2d}
    out_png = tmp_path / "slice0_mask.png"
    saved = viewer.layers.save(str(out_png), selected=True, plugin="napari-sickle")
    assert [str(s) for s in saved] == [str(out_png)]
    np.testing.assert_array_equal(np.asarray(Image.open(out_png)), labels.data[0])
    with pytest.raises(Exception, match="already exists"):
        viewer.layers.save(str(out_png), selected=True, plugin="napari-sickle")

    df = pd.DataFrame(
        {
            "image": "s.png",
            "region_id": [1, 2],
            "x_min": [5, 40],
            "y_min": [6, 50],
            "x_max": [25, 70],
            "y_max": [30, 90],
        }
    )
    for i, t in enumerate(RBC_TYPES):
        df[t] = [1 if i == 0 else 0, 1 if i == 1 else 0]
    src = tmp_path / "regions.csv"
    df.to_csv(src, index=False)
    [regions] = viewer.open(str(src), plugin="napari-sickle")
    assert regions.features["label"].tolist() == ["Oval/Disc", "Elongated/Sickle"]
    regions.add_rectangles(np.array([[100, 100], [120, 130]]))  # user adds a box
    assert len(regions.features) == 3
    viewer.layers.selection = {regions}
    out_csv = tmp_path / "edited.csv"
    viewer.layers.save(str(out_csv), selected=True, plugin="napari-sickle")
    back = pd.read_csv(out_csv)
    assert len(back) == 3
    assert (
        back.iloc[:2][["x_min", "y_min", "x_max", "y_max"]].values.tolist()
        == df[["x_min", "y_min", "x_max", "y_max"]].values.tolist()
    )
    assert back.iloc[2][["x_min", "y_min", "x_max", "y_max"]].tolist() == [100, 100, 130, 120]
    [again] = viewer.open(str(out_csv), plugin="napari-sickle")
    assert len(again.data) == 3
