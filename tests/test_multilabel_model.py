"""Multi-label RBC model pieces: padded (aspect- and scale-preserving) crops, pooling
variants, flip views (training copies + test-time averaging), feature standardisation and
loading checkpoints written before these options."""

import numpy as np
import pytest
import torch

from napari_sickle.models.multilabel import (
    RBCClassifier,
    feature_dim,
    new_classifier,
    padded_crops_from_boxes,
)


def _unnormalise(t):
    from napari_sickle.constants import IMAGENET_MEAN, IMAGENET_STD

    m = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((t * s + m) * 255).permute(1, 2, 0).numpy()


def test_padded_crop_keeps_aspect_ratio_and_fills_with_border_colour():
    img = np.full((100, 200, 3), 200, np.uint8)
    img[40:60, 20:80] = 50  # a 60 x 20 dark bar inside the box below
    box = [[10, 30, 90, 70]]  # 80 x 40 box: border pixels are all background (200)
    crop = _unnormalise(padded_crops_from_boxes(img, box, size=40, min_side=0)[0])
    dark = crop[..., 0] < 125
    rows, cols = np.nonzero(dark.any(1))[0], np.nonzero(dark.any(0))[0]
    # the 80 px box side becomes 40 px: the bar is 30 x 10, not stretched to a square
    assert 28 <= len(cols) <= 32 and 9 <= len(rows) <= 12
    assert np.allclose(crop[:5, :, 0], 200, atol=2)  # padding rows have the border colour


def test_padded_crop_min_side_keeps_small_cells_at_native_scale():
    img = np.full((64, 64, 3), 210, np.uint8)
    img[22:42, 22:42] = 60  # a 20 px cell
    small = _unnormalise(padded_crops_from_boxes(img, [[17, 17, 47, 47]], size=40, min_side=40)[0])
    assert 19 <= (small[..., 0] < 135).any(1).sum() <= 21  # 30 px box on a 40 px canvas: scale 1
    stretched = _unnormalise(padded_crops_from_boxes(img, [[17, 17, 47, 47]], size=40, min_side=0)[0])
    assert (stretched[..., 0] < 135).any(1).sum() >= 25  # without min_side the cell is enlarged


@pytest.mark.parametrize("pool", ["avg", "avgmax", "avgmax-s4"])
@pytest.mark.parametrize("backbone", ["efficientnet-lite0", "resnet18"])
def test_pooling_feature_sizes(pool, backbone):
    clf = new_classifier(backbone, input_size=64, pretrained=False, pool=pool, tta="none")
    img = np.full((64, 256, 3), 180, np.uint8)
    f = clf.features(clf.crops(img, [[0, 0, 64, 64], [0, 0, 256, 64]]))
    assert f.shape == (2, feature_dim(backbone, pool))
    assert torch.isfinite(f).all()


def test_checkpoint_round_trip_with_standardisation_and_old_format():
    clf = new_classifier("efficientnet-lite0", input_size=32, pretrained=False)
    assert clf.config["pool"] == "avgmax-s4" and clf.config["crop"] == "pad" and clf.config["standardize"]
    feats = torch.randn(20, feature_dim("efficientnet-lite0", "avgmax-s4")) * 3 + 5
    clf.net.heads.set_standardization(feats)
    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    p = clf.predict_boxes(img, [[0, 0, 70, 50]])
    again = RBCClassifier.from_checkpoint(clf.to_checkpoint())
    assert np.allclose(again.predict_boxes(img, [[0, 0, 70, 50]]), p, atol=1e-6)
    assert torch.allclose(again.net.heads.feat_mean, feats.mean(0))
    # a checkpoint written before pool/crop/standardize existed loads with the old behaviour
    old = new_classifier(
        "efficientnet-lite0", input_size=32, pretrained=False, pool="avg", crop="stretch", standardize=False
    ).to_checkpoint()
    for key in ("pool", "crop", "min_side", "standardize", "tta", "split"):
        old["config"].pop(key)
    loaded = RBCClassifier.from_checkpoint(old)
    assert loaded.pool == "avg" and loaded.tta == "none" and loaded.split == "none"
    assert loaded.features(loaded.crops(img, [[0, 0, 70, 50]])).shape == (1, 1280)


def test_hflip_views_are_mirror_features_and_predictions_average_their_logits():
    torch.manual_seed(0)
    clf = new_classifier("efficientnet-lite0", input_size=32, pretrained=False, split="none", tta="hflip")
    plain = new_classifier("efficientnet-lite0", input_size=32, pretrained=False, tta="none", split="none")
    plain.net.load_state_dict(clf.net.state_dict())
    img = np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    boxes = [[0, 0, 60, 40], [5, 5, 35, 30]]
    f = clf.features(clf.crops(img, boxes))
    d = feature_dim("efficientnet-lite0", "avgmax-s4")
    assert f.shape == (2, 2, d)
    assert torch.allclose(f[:, 0], plain.features(plain.crops(img, boxes)), atol=1e-5)
    mirrored = [[0, 0, 60, 40], [25, 5, 55, 30]]  # the same boxes in the left-right mirrored image
    assert torch.allclose(f[:, 1], plain.features(plain.crops(img[:, ::-1], mirrored)), atol=1e-4)
    assert not torch.allclose(f[:, 0], f[:, 1], atol=1e-3)  # a random image is not symmetric
    with torch.no_grad():
        expect = torch.sigmoid((clf.net.heads(f[:, 0]) + clf.net.heads(f[:, 1])) / 2).numpy()
    assert np.allclose(clf.head_probs(f), expect, atol=1e-6)
    assert np.allclose(clf.predict_boxes(img, boxes), expect, atol=1e-5)
    assert clf.features(clf.crops(img, np.zeros((0, 4)))).shape == (0, 2, d)


def test_d4_views_are_the_eight_symmetries_of_the_input():
    torch.manual_seed(0)
    clf = new_classifier("efficientnet-lite0", input_size=32, pretrained=False, split="none")
    assert clf.tta == "d4"  # the default recipe
    plain = new_classifier("efficientnet-lite0", input_size=32, pretrained=False, tta="none", split="none")
    plain.net.load_state_dict(clf.net.state_dict())
    img = np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    crops = clf.crops(img, [[0, 0, 60, 40], [5, 5, 35, 30], [10, 2, 50, 38]])
    f = clf.features(crops, batch_size=2)  # batches of 2 regions x 8 views
    d = feature_dim("efficientnet-lite0", "avgmax-s4")
    assert f.shape == (3, 8, d)
    for k in range(4):
        rot = crops.rot90(k, (-2, -1))
        assert torch.allclose(f[:, k], plain.features(rot), atol=1e-4)
        assert torch.allclose(f[:, 4 + k], plain.features(rot.flip(-1)), atol=1e-4)
    assert np.allclose(clf.head_probs(f), torch.sigmoid(clf.net.heads(f).detach()).numpy())
    assert clf.features(crops[:0]).shape == (0, 8, d)
    with pytest.raises(ValueError, match="tta"):
        new_classifier("efficientnet-lite0", input_size=32, pretrained=False, tta="d8")


def test_flipped_views_are_training_rows():
    """(N, V, D) features train the heads on N * V rows with each region's labels repeated."""
    from napari_sickle.models.multilabel import make_heads
    from napari_sickle.training.multilabel import Bags, _train_heads

    rng = np.random.default_rng(0)
    y = np.eye(6, dtype=np.float32)[rng.integers(0, 2, 40)]
    # view 0 carries the label in feature 0, view 1 (the "mirror") in feature 1
    X = rng.normal(size=(40, 2, 8)).astype(np.float32)
    X[:, 0, 0] += 4 * y[:, 0]
    X[:, 1, 1] += 4 * y[:, 0]
    seen = []
    heads = make_heads(8, hidden=16, standardize=True)
    heads.set_standardization(X)
    assert heads.feat_mean.shape == (8,)
    real_forward = heads.forward
    heads.forward = lambda feats: (seen.append(tuple(feats.shape)), real_forward(feats))[1]
    _train_heads(heads, Bags(X), y, Bags(X), y, epochs=1, lr=1e-2, batch_size=16, seed=0)
    assert (16, 8) in seen  # training batches are rows of single views
    assert (40, 2, 8) in seen  # validation: all views of each region at once


def test_unknown_pool_is_a_clear_error():
    from napari_sickle.models.checkpoint import CheckpointError

    with pytest.raises(ValueError, match="unknown pooling 'gem'"):
        new_classifier("efficientnet-lite0", input_size=32, pretrained=False, pool="gem")
    ck = new_classifier("efficientnet-lite0", input_size=32, pretrained=False).to_checkpoint()
    ck["config"]["pool"] = "gem"
    with pytest.raises(CheckpointError, match="unknown pooling 'gem'"):
        RBCClassifier.from_checkpoint(ck)
