"""The occlusion rule (models/occlusion.py): a half-hidden cell is completed from its own outline
and called Elongated/Sickle only when its completed shape says so too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sickle.constants import RBC_TYPES
from napari_sickle.models import occlusion as O
from napari_sickle.models.crops import batch_region_crops

ES = RBC_TYPES.index("elongated_sickle")


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _two_cells(shape=(100, 130)):
    """Cell 1 (a disc) partly hidden under cell 2 (a disc on top): labels and the hidden part."""
    a, b = _disc(shape, 50, 45, 22), _disc(shape, 50, 78, 22)
    labels = np.zeros(shape, np.int32)
    labels[a] = 1
    labels[b] = 2
    return labels, a & b


def test_hidden_part_restores_the_covered_part_of_a_round_cell():
    labels, truth = _two_cells()
    rc = O.hidden_part(labels, 1)
    assert rc is not None
    add = np.zeros_like(truth)
    add[rc] = True
    assert not (add & (labels != 2)).any()  # only pixels of the neighbour are given to the cell
    iou = (add & truth).sum() / (add | truth).sum()
    assert iou > 0.7
    whole = (labels == 1) | add
    assert abs(whole.sum() - np.pi * 22**2) < 0.1 * np.pi * 22**2


def test_no_completion_without_a_neighbour_or_an_own_outline():
    labels = _disc((80, 80), 40, 40, 20).astype(np.int32)
    assert O.hidden_part(labels, 1) is None  # touches no other cell
    tiny = np.zeros((40, 40), np.int32)
    tiny[10:14, 10:14], tiny[14:30, 10:30] = 1, 2
    assert O.hidden_part(tiny, 1) is None  # too small to fit an ellipse to


def test_completed_paints_the_hidden_part_in_the_cells_colour():
    labels, _ = _two_cells()
    region = np.full(labels.shape + (3,), 230.0, np.float32)
    region[labels == 1] = (200, 120, 130)
    region[labels == 2] = (180, 90, 100)
    lab, reg, win = O.completed(labels, 1, region, reach=7)
    assert (lab == labels[win]).sum() < lab.size and reg.shape == region[win].shape
    add = (lab == 1) & (labels[win] == 2)
    assert add.any() and ((lab != labels[win]) == add).all()  # only the hidden part changes
    np.testing.assert_allclose(reg[add], np.broadcast_to([200, 120, 130], reg[add].shape))
    np.testing.assert_array_equal(reg[~add], region[win][~add])
    ys, xs = np.nonzero(lab == 1)  # the window holds the completed cell and 7 + 2 px around it
    assert ys.min() >= 9 and xs.min() >= 9 and lab.shape[0] - 1 - ys.max() >= 9
    assert lab.shape[1] - 1 - xs.max() >= 9 or win[1].stop == labels.shape[1]
    assert O.completed(_disc((60, 60), 30, 30, 15).astype(np.int32), 1, region[:60, :60]) is None


def test_apply_rule_takes_the_smaller_elongated_probability_and_keeps_the_rest():
    p = np.full((5, 6), 0.2, np.float32)
    p[0, ES], p[1, ES] = 0.9, 0.8  # two visible cells of region 0 read as elongated
    p[3] = 0.7  # completed reading of row 0: round (other types differ, and are not used)
    p[3, ES] = 0.1
    p[4, ES] = 0.95  # completed reading of row 1 (more elongated): row 1 keeps 0.8
    owner = np.array([0, 0, 1, -1, -2])
    q, o = O.apply_rule(p, owner, RBC_TYPES)
    np.testing.assert_array_equal(o, [0, 0, 1])
    assert q[0, ES] == pytest.approx(0.1) and q[1, ES] == pytest.approx(0.8)
    np.testing.assert_array_equal(np.delete(q[0], ES), np.delete(p[0], ES))  # other types: visible reading
    same, so = O.apply_rule(p[:3], owner[:3], RBC_TYPES)
    np.testing.assert_array_equal(same, p[:3])  # no completed rows: nothing changes
    np.testing.assert_array_equal(so, owner[:3])
    with pytest.raises(ValueError, match="occlusion rule"):
        O.check_rule("hull")


def _smear_with_overlaps():
    """Two 'cells' with dark rims, one partly on top of the other, and a lone cell."""
    img = np.full((120, 200, 3), 235, np.uint8)
    for cy, cx in ((60, 40), (60, 72), (60, 160)):
        disc, inner = _disc(img.shape[:2], cy, cx, 22), _disc(img.shape[:2], cy, cx, 18)
        img[disc] = (150, 70, 80)
        img[inner] = (215, 160, 165)
    return img, np.array([[10, 30, 100, 90], [132, 32, 190, 90]], np.float32)


@pytest.fixture(scope="module")
def classifiers():
    from napari_sickle.models.multilabel import new_classifier

    torch.manual_seed(0)
    plain = new_classifier(pretrained=False, split="cells", tta="none", input_size=32)
    rule = new_classifier(pretrained=False, split="cells", tta="none", input_size=32)
    rule.net.load_state_dict(plain.net.state_dict())
    rule.config["occlusion"] = "ellipse-min"
    return plain, rule


def test_classifier_reads_half_hidden_cells_by_the_rule(classifiers):
    plain, rule = classifiers
    img, boxes = _smear_with_overlaps()
    crops, owner = rule.region_crops(img, boxes)
    extra = owner < 0
    assert extra.any()  # the overlapping pair was split and at least one cell completed
    assert (owner[-owner[extra] - 1] == 0).all()  # completed readings point at cells of region 0
    vis, vis_owner = plain.region_crops(img, boxes)
    np.testing.assert_array_equal(vis_owner, owner[~extra])
    assert torch.allclose(vis, crops[torch.from_numpy(~extra)])
    p_rule, p_plain = rule.predict_boxes(img, boxes), plain.predict_boxes(img, boxes)
    heads = rule.head_probs(rule.features(crops))
    cells = heads[~extra].copy()
    np.minimum.at(cells[:, ES], -owner[extra] - 1, heads[extra, ES])
    np.testing.assert_allclose(p_rule[0], cells[owner[~extra] == 0].max(0), atol=1e-6)
    np.testing.assert_allclose(np.delete(p_rule, ES, 1), np.delete(p_plain, ES, 1), atol=1e-6)
    assert (p_rule[:, ES] <= p_plain[:, ES] + 1e-6).all()
    np.testing.assert_allclose(p_rule[1], p_plain[1], atol=1e-6)  # the lone cell: unchanged


def test_batched_images_keep_the_completed_cells_with_their_own_image(classifiers):
    _, rule = classifiers
    img, boxes = _smear_with_overlaps()
    crops, owner = batch_region_crops(rule, [img, img[:, ::-1].copy()], [boxes, boxes[:1]])
    p = rule.region_probs(rule.features(crops), owner, 3)
    np.testing.assert_allclose(p[:2], rule.predict_boxes(img, boxes), atol=1e-5)
    flipped = img[:, ::-1].copy()
    np.testing.assert_allclose(p[2:], rule.predict_boxes(flipped, boxes[:1]), atol=1e-5)


def test_rule_is_kept_in_the_checkpoint_and_checked_at_load(classifiers):
    from napari_sickle.models.checkpoint import CheckpointError
    from napari_sickle.models.multilabel import RBCClassifier

    _, rule = classifiers
    ck = rule.to_checkpoint()
    assert RBCClassifier.from_checkpoint(ck).occlusion == "ellipse-min"
    ck["config"]["occlusion"] = "hull"
    with pytest.raises(CheckpointError, match="occlusion rule"):
        RBCClassifier.from_checkpoint(ck)


def test_per_region_path_applies_the_rule_as_the_batched_path(classifiers):
    _, rule = classifiers
    img, boxes = _smear_with_overlaps()
    got, o_got = rule.region_crops(img, boxes)
    rule.crop_path = "per-region"
    try:
        ref, o_ref = rule.region_crops(img, boxes)
        p_ref = rule.predict_boxes(img, boxes)
    finally:
        rule.crop_path = "batched"
    assert (o_ref < 0).any()  # the host path completed a cell too
    np.testing.assert_array_equal(o_got, o_ref)
    assert float((got - ref).abs().max()) < 1e-4
    np.testing.assert_allclose(rule.predict_boxes(img, boxes), p_ref, atol=1e-4)
