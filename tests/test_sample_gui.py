"""The sample smear opens in a real napari viewer, and what it draws is not blank."""

import numpy as np

from napari_sickle.constants import RBC_TYPES


def test_sample_opens_in_viewer_and_draws(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-sickle", "smear")
    kinds = {type(layer).__name__ for layer in viewer.layers}
    assert {"Image", "Labels", "Shapes"} <= kinds

    image = next(l for l in viewer.layers if type(l).__name__ == "Image")
    labels = next(l for l in viewer.layers if type(l).__name__ == "Labels")
    shapes = next(l for l in viewer.layers if type(l).__name__ == "Shapes")
    assert image.rgb and image.data.shape == (1080, 1920, 3)
    assert labels.data.shape == (1080, 1920)
    n_cells = len(np.unique(labels.data)) - 1
    assert n_cells >= 150
    assert len(shapes.data) >= 1
    for col in RBC_TYPES:
        assert col in shapes.features.columns
    # every GT region box encloses cell pixels of the mask
    for verts in shapes.data[:20]:
        (r0, c0), (r1, c1) = verts.min(0).astype(int), verts.max(0).astype(int)
        assert labels.data[r0 : r1 + 1, c0 : c1 + 1].any()

    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[2] in (3, 4)
    rgb = shot[..., :3].astype(float)
    assert rgb.std() > 5, "screenshot is blank"
    assert rgb.mean() > 20, "screenshot is black"
