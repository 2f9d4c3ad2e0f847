"""Segmentation metrics on hand-built masks with a known merge and a known split."""

import numpy as np
import pytest

from napari_sickle.analysis.seg_metrics import (
    as_instances,
    foreground_dice_iou,
    merged_mask,
    segmentation_metrics,
)


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture
def scene():
    """Five true cells: A, B and E touch in a row, C is alone, D is alone.

    prediction: A+B+E merged into one object, C correct, D split into three strips.
    """
    shape = (100, 160)
    gt = np.zeros(shape, np.int32)
    gt[disk(shape, 30, 30, 12)] = 1  # A
    gt[disk(shape, 30, 54, 12) & (gt == 0)] = 2  # B, touching A
    gt[disk(shape, 70, 40, 12)] = 3  # C
    gt[disk(shape, 50, 120, 15)] = 4  # D
    gt[disk(shape, 30, 78, 12) & (gt == 0)] = 5  # E, touching B
    pred = np.zeros(shape, np.int32)
    pred[(gt == 1) | (gt == 2) | (gt == 5)] = 10  # merge of A, B and E
    pred[gt == 3] = 11  # exact
    d = gt == 4
    cols = np.arange(shape[1])[None, :]
    pred[d & (cols < 115)] = 12  # three vertical strips of D
    pred[d & (cols >= 115) & (cols < 125)] = 13
    pred[d & (cols >= 125)] = 14
    return gt, pred


def test_known_merge_and_split_are_counted(scene):
    gt, pred = scene
    m = segmentation_metrics(pred, gt)
    assert m.count_true == 5
    assert m.count_pred == 5
    assert m.count_error == 0
    assert m.merges == 1 and m.merged_cells == 3
    assert m.splits == 1
    # ids refer to relabelled predictions (sequential): the merged one covers A and B
    mm = merged_mask(pred, gt)
    assert set(np.unique(mm)) - {0} == {1}
    assert np.array_equal(mm > 0, (gt == 1) | (gt == 2) | (gt == 5))
    # only C matches at IoU >= 0.5: each strip of D and the three-cell merge have IoU < 0.5
    assert m.instance_f1_50 == pytest.approx(2 * 1 / (5 + 5))
    assert m.precision_50 == pytest.approx(0.2) and m.recall_50 == pytest.approx(0.2)
    # foreground is identical: Dice and IoU are perfect although instances are wrong
    assert m.dice == pytest.approx(1.0) and m.iou == pytest.approx(1.0)


def test_perfect_and_empty():
    gt = np.zeros((40, 40), np.int32)
    gt[5:15, 5:15] = 1
    gt[20:30, 20:35] = 2
    m = segmentation_metrics(gt, gt)
    assert (m.dice, m.iou, m.instance_f1_50, m.merges, m.splits) == (1.0, 1.0, 1.0, 0, 0)
    empty = np.zeros_like(gt)
    m0 = segmentation_metrics(empty, gt)
    assert m0.dice == 0.0 and m0.instance_f1_50 == 0.0 and m0.count_error == 2
    both = segmentation_metrics(empty, empty)
    assert both.dice == 1.0 and both.instance_f1_50 == 1.0 and both.count_true == 0


def test_dice_iou_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :6] = True  # 60 px
    b[:, 4:] = True  # 60 px, overlap 20
    d, i = foreground_dice_iou(a, b)
    assert d == pytest.approx(2 * 20 / 120)
    assert i == pytest.approx(20 / 100)


def test_binary_masks_become_4_connected_instances():
    m = np.zeros((10, 10), np.uint8)
    m[1:4, 1:4] = 255
    m[4:7, 4:7] = 255  # touches the first only diagonally: separate cells
    lab = as_instances(m)
    assert lab.max() == 2
    assert as_instances(m > 0).max() == 2


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(np.zeros((10, 10)), np.zeros((10, 12)))
