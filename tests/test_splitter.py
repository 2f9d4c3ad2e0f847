"""The learned cell splitter (split="unet"): training from single-cell crops, splitting,
checkpoints and the multi-label classifier that uses it."""

import numpy as np
import pytest
import torch

from napari_sickle.data.compose import compose_patches, crops_from_arrays
from napari_sickle.models.multilabel import RBCClassifier, new_classifier
from napari_sickle.models.splitter import split_cells_learned
from napari_sickle.training.splitter import split_count_accuracy, train_splitter


def _cell(r, seed, shape=(40, 40)):
    """One dark disc (radius r) on a grey background, like a single-cell crop."""
    yy, xx = np.indices(shape)
    rng = np.random.default_rng(seed)
    img = np.full(shape, 200.0)
    img[np.hypot(yy - shape[0] / 2, xx - shape[1] / 2) <= r] = 110.0
    img += rng.normal(0, 2.0, shape)
    return np.clip(img, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)


@pytest.fixture(scope="module")
def crops():
    return crops_from_arrays([(_cell(10 + i % 4, i), i % 6) for i in range(24)])


@pytest.fixture(scope="module")
def trained(crops):
    torch.manual_seed(0)
    return train_splitter(crops, seed=0, n_patches=40, steps=60, size=48, batch=8)


def test_trained_splitter_separates_composed_cells_and_keeps_single_cells_whole(crops, trained):
    net, stats = trained
    assert stats["images"] == 40 + len(crops) and stats["steps"] == 60 and np.isfinite(stats["final_loss"])
    patches = compose_patches(crops, 12, seed=5, min_cells=2, max_cells=3)
    acc = split_count_accuracy(net, patches)
    assert acc["n"] == 12 and acc["exact"] >= 0.8, acc
    untrained, _ = train_splitter(crops, seed=0, n_patches=1, steps=0)
    assert split_count_accuracy(untrained, patches)["exact"] < acc["exact"]  # it is the training that splits
    singles = [int(split_cells_learned(net, c.image).max()) for c in crops[:8]]
    assert singles.count(1) >= 7, singles
    assert split_cells_learned(net, np.full((40, 40, 3), 200, np.uint8)).max() == 0  # no cell: nothing
    with pytest.raises(ValueError, match="unknown splitter option"):
        train_splitter(crops, steps=1, typo=3)


def test_unet_split_classifier_needs_a_trained_splitter_and_round_trips(crops, trained):
    net, _ = trained
    clf = new_classifier("efficientnet-lite0", input_size=32, pretrained=False, split="unet", tta="none")
    assert clf.config["splitter"]["trained"] is False
    img = compose_patches(crops, 1, seed=9, min_cells=2, max_cells=2)[0][0]
    box = [[0, 0, img.shape[1], img.shape[0]]]
    with pytest.raises(RuntimeError, match="not trained"):
        clf.predict_boxes(img, box)
    clf.net.splitter.load_state_dict(net.state_dict())
    clf.config["splitter"]["trained"] = True
    crops_, owner = clf.region_crops(img, box)
    assert len(crops_) == int(split_cells_learned(net, img).max()) >= 1 and set(owner) == {0}
    p = clf.predict_boxes(img, box)
    again = RBCClassifier.from_checkpoint(clf.to_checkpoint())
    assert again.split == "unet"
    assert all(torch.equal(a, b) for a, b in zip(again.net.splitter.state_dict().values(), net.state_dict().values()))
    assert np.allclose(again.predict_boxes(img, box), p, atol=1e-6)
    with pytest.raises(ValueError, match="unknown splitter setting"):
        new_classifier("efficientnet-lite0", input_size=32, pretrained=False, split="unet", splitter={"seedz": 1})


def test_unet_split_training_needs_class_folders(tmp_path):
    from napari_sickle.training.multilabel import train_multilabel

    with pytest.raises(ValueError, match="class sub-folders"):
        train_multilabel("simulated", tmp_path, split="unet", pretrained=False, epochs=1, n_smears=1)


def test_fit_classifier_splitter_installs_the_trained_network(crops):
    from napari_sickle.training.splitter import fit_classifier_splitter

    clf = new_classifier("efficientnet-lite0", input_size=32, pretrained=False, split="unet", tta="none")
    before = {k: v.clone() for k, v in clf.net.splitter.state_dict().items()}
    stats = fit_classifier_splitter(clf, crops, seed=0, n_patches=4, steps=3, size=48)
    assert stats["steps"] == 3 and clf.config["splitter"]["trained"] is True
    assert any(not torch.equal(before[k], v) for k, v in clf.net.splitter.state_dict().items())
    img = compose_patches(crops, 1, seed=3, min_cells=2, max_cells=2)[0][0]
    assert clf.predict_boxes(img, [[0, 0, img.shape[1], img.shape[0]]]).shape == (1, 6)


def test_half_scale_splitter_with_occluded_patches_labels_regions_at_full_size(crops):
    """A splitter that sees regions at half scale, trained with occluded patches too: labels
    come back at the region's own size, and a batch gives each region the labels it gets alone."""
    from napari_sickle.data.compose import compose_occluded
    from napari_sickle.models.splitter import DEFAULT_SPLITTER, LearnedSplit, split_many_learned

    cfg = {**DEFAULT_SPLITTER, "scale": 0.5}
    torch.manual_seed(0)
    net, stats = train_splitter(crops, seed=0, n_patches=20, n_occluded=20, steps=40, size=48, net_config=cfg)
    assert stats["images"] == 40 + len(crops)
    split = LearnedSplit(net, cfg)
    regions = [p[0] for p in compose_occluded(crops, 4, seed=3, return_masks=True)] + [
        np.full((30, 50, 3), 200, np.uint8)
    ]
    regions += [r[::-1].copy() for r in regions[:2]]  # same padded sizes: shared network calls
    many = split.many(regions, workers=2)
    batched = split_many_learned(net, regions, cfg, batch_pixels=1 << 20)  # several regions per call
    for r, lab, lab_b in zip(regions, many, batched):
        np.testing.assert_array_equal(lab, lab_b)
        assert lab.shape == r.shape[:2] and lab.dtype == np.int32
        np.testing.assert_array_equal(lab, split(r))
    assert many[4].max() == 0  # a blank region has no cell


def test_occluded_patches_return_the_visible_part_of_each_cell(crops):
    from napari_sickle.data.compose import compose_occluded

    for img, types, n, inst in compose_occluded(crops, 5, seed=1, min_visible=0.6, return_masks=True):
        assert inst.shape == img.shape[:2] and set(np.unique(inst)) == set(range(n + 1))
        assert types.sum() >= 1
