"""Cell split of a region and the multiple-instance ("any cell of this type") classifier."""

import numpy as np
import pytest
import torch

from napari_sickle.models.cells import cell_canvases, split_cells
from napari_sickle.models.multilabel import RBCClassifier, new_classifier, segment_max
from napari_sickle.training.multilabel import Bags, _train_heads, region_logits

from conftest import disc_image


def test_touching_discs_are_split_and_a_single_cell_is_one():
    two = disc_image([(45, 50), (45, 99)], [25, 25])  # touching at one point
    lab = split_cells(two)
    assert lab.max() == 2
    # each cell is (mostly) one label
    assert len(np.unique(lab[45, 30:45])) == 1 and len(np.unique(lab[45, 105:120])) == 1
    assert lab[45, 40] != lab[45, 110]
    one = disc_image([(45, 75)], [28])
    assert split_cells(one).max() == 1
    ring = disc_image([(45, 75)], [28], outline=True)  # outline-style cell: filled, one cell
    lab = split_cells(ring)
    assert lab.max() == 1 and lab[45, 75] == 1
    assert split_cells(np.full((60, 60, 3), 170, np.uint8)).max() == 0


def test_a_piece_of_a_neighbour_cut_by_the_region_edge_is_not_a_cell():
    img = disc_image([(45, 60), (45, 140)], [26, 22])  # the second disc is cut by the right edge
    img = img[:, :125]
    lab = split_cells(img)
    assert lab.max() == 1 and lab[45, 60] == 1


def test_cell_canvases_put_each_cell_alone_on_the_background():
    img = disc_image([(45, 50), (45, 99)], [25, 25])
    canv = cell_canvases(img, [0, 0, 150, 90], min_side=80)
    assert len(canv) == 2
    for c in canv:
        assert c.shape[0] == c.shape[1] >= 80
        dark = c[..., 0] < 150
        # one disc of area ~pi*25^2 on the canvas, not two
        assert 0.7 * np.pi * 25**2 < dark.sum() < 1.3 * np.pi * 25**2
    # nothing found: the region as it is
    flat = cell_canvases(np.full((40, 30, 3), 200, np.uint8), [0, 0, 30, 40], min_side=50)
    assert len(flat) == 1 and flat[0].shape == (50, 50, 3)


def test_region_inputs_and_probabilities_follow_the_owner():
    torch.manual_seed(0)
    clf = new_classifier("efficientnet-lite0", input_size=32, min_side=80, pretrained=False, tta="none")
    assert clf.split == "cells" and clf.config["cell_split"]["h"] == 1.0
    img = np.full((100, 400, 3), 190, np.uint8)
    img[:90, :150] = disc_image([(45, 50), (45, 99)], [25, 25])
    img[:90, 250:400] = disc_image([(45, 75)], [28])
    boxes = [[0, 0, 150, 90], [250, 0, 400, 90]]
    crops, owner = clf.region_crops(img, boxes)
    assert owner.tolist() == [0, 0, 1]
    f = clf.features(crops)
    per_cell = clf.head_probs(f)
    probs = clf.predict_boxes(img, boxes)
    assert np.allclose(probs[0], per_cell[:2].max(0), atol=1e-6) and np.allclose(probs[1], per_cell[2], atol=1e-6)
    again = RBCClassifier.from_checkpoint(clf.to_checkpoint())
    assert again.split == "cells" and np.allclose(again.predict_boxes(img, boxes), probs, atol=1e-6)
    with pytest.raises(ValueError, match="unknown split"):
        new_classifier("efficientnet-lite0", input_size=32, pretrained=False, split="tiles")
    with pytest.raises(ValueError, match="unknown cell_split"):
        new_classifier("efficientnet-lite0", input_size=32, pretrained=False, cell_split={"min_dist": 3})


def test_segment_max_and_bags():
    v = np.array([[0.1, 0.9], [0.5, 0.2], [0.3, 0.3]], np.float32)
    assert np.allclose(segment_max(v, [0, 0, 1], 2), [[0.5, 0.9], [0.3, 0.3]])
    b = Bags(np.arange(12, dtype=np.float32).reshape(6, 2), [0, 0, 1, 2, 2, 2], 3)
    t = b.take([2, 0])
    assert t.n == 2 and t.owner.tolist() == [0, 0, 0, 1, 1] and t.X[:, 0].tolist() == [6, 8, 10, 0, 2]
    c = Bags.cat([t, b.take([1])])
    assert c.n == 3 and c.owner.tolist() == [0, 0, 0, 1, 1, 2]


def test_multiple_instance_training_learns_cell_types_from_region_labels():
    """Regions of 1-3 cells labelled only with the union of their cells' types: the heads learn
    the per-cell rule (feature k carries type k), so the largest-over-cells rule is right on
    new regions, and more often than heads on one averaged vector per region."""
    rng = np.random.default_rng(0)

    def regions(n):
        X, owner, Y = [], [], []
        for r in range(n):
            k = rng.integers(1, 4)
            types = rng.integers(0, 6, k)
            x = rng.normal(0, 1, (k, 12)).astype(np.float32)
            x[np.arange(k), types] += 4.0
            X.append(x)
            owner += [r] * k
            y = np.zeros(6, np.float32)
            y[types] = 1
            Y.append(y)
        return Bags(np.concatenate(X), owner, n), np.stack(Y)

    Xtr, Ytr = regions(600)
    Xte, Yte = regions(200)
    from napari_sickle.models.multilabel import make_heads

    torch.manual_seed(0)
    heads = make_heads(12, hidden=32, standardize=True)
    heads.set_standardization(Xtr.X)
    _train_heads(heads, Xtr, Ytr, Xte, Yte, epochs=30, lr=3e-3, batch_size=64, seed=0)
    with torch.no_grad():
        pred = torch.sigmoid(region_logits(heads.eval(), Xte)).numpy() >= 0.5
    exact = np.mean(np.all(pred == (Yte > 0), axis=1))
    assert exact > 0.9, exact

    # the same heads on one averaged feature vector per region (the whole-region recipe)
    def pooled(b):
        return Bags(np.stack([b.X[b.owner == r].mean(0) for r in range(b.n)]))

    torch.manual_seed(0)
    flat = make_heads(12, hidden=32, standardize=True)
    flat.set_standardization(pooled(Xtr).X)
    _train_heads(flat, pooled(Xtr), Ytr, pooled(Xte), Yte, epochs=30, lr=3e-3, batch_size=64, seed=0)
    with torch.no_grad():
        pred_flat = torch.sigmoid(region_logits(flat.eval(), pooled(Xte))).numpy() >= 0.5
    assert np.mean(np.all(pred_flat == (Yte > 0), axis=1)) < exact - 0.05
