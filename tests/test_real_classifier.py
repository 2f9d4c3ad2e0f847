"""Real-cell classifier data rules (Chula class mapping, unmapped classes, validation splits),
the occluding composer, the training augmentation and a tiny fine-tuning run."""

import numpy as np
import pytest

from napari_sickle.constants import RBC_TYPES
from napari_sickle.data.real_cells import (
    CHULA_CLASSES,
    CHULA_TO_TYPE,
    chula_cells,
    chula_is_val,
    chula_type,
    chula_type_row,
    cut_cell,
    smear_cell_labels,
    xu_is_val,
)


def test_chula_mapping_and_unmapped_classes():
    assert chula_type(0) == chula_type(6) == "oval_disc"  # normal, ovalocyte
    assert chula_type(12) == "elongated_sickle"  # elliptocyte
    assert chula_type(5) == "stomatocyte"
    assert chula_type(8) == "echinocyte"  # burr cell
    unmapped = sorted(set(CHULA_CLASSES) - set(CHULA_TO_TYPE))
    assert unmapped == [1, 2, 3, 4, 7, 9, 10, 11]
    for c in unmapped:  # no counterpart among the six types: no type row, left out of training
        assert chula_type(c) is None and chula_type_row(c) is None
    row = chula_type_row(8)
    assert row.tolist() == [1.0 if t == "echinocyte" else 0.0 for t in RBC_TYPES]
    assert set(CHULA_TO_TYPE.values()) <= set(RBC_TYPES)


def test_validation_rules():
    assert chula_is_val("10") and chula_is_val("Dataset/15.jpg") and not chula_is_val("11")
    assert xu_is_val("x/Oval/JH1766915_Im1_subImg2.png") and not xu_is_val("x/Oval/JH172_Im1_subImg2.png")


def _smear(tmp_path):
    """A 120x160 smear with three touching/separate stained cells and point labels."""
    img = np.full((120, 160, 3), (200, 190, 210), np.uint8)
    yy, xx = np.mgrid[:120, :160]
    centres = [(40, 40, 0), (40, 72, 3), (90, 120, 12)]  # normal, spherocyte (unmapped), elliptocyte
    for cy, cx, c in centres:
        ry, rx = (16, 16) if c != 12 else (10, 20)
        img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = (150, 90, 120)
    (tmp_path / "Dataset").mkdir()
    (tmp_path / "Label").mkdir()
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "Dataset" / "7.jpg", quality=95)
    (tmp_path / "Label" / "7.txt").write_text("".join(f"{x} {y} {c}\n" for y, x, c in centres))
    return img, centres


def test_chula_cells_cut_touching_cells_apart_and_skip_unmapped(tmp_path):
    img, centres = _smear(tmp_path)
    pts = np.array([[x, y, c] for y, x, c in centres])
    labels, bg = smear_cell_labels(img, pts)
    assert len(np.unique(labels)) == 4  # background + three territories
    crop, mask = cut_cell(img, labels, 0, bg)
    # the touching neighbour (label 2) is painted over: the right part of the crop is background
    assert crop.shape[1] <= 16 * 2 + 12 and np.abs(crop[crop.shape[0] // 2, -2].astype(int) - bg).max() < 30
    cells = chula_cells(tmp_path, mapped_only=True)
    assert sorted(c.class_name for c in cells) == ["elliptocyte", "normal"]
    assert all(c.split == "train" for c in cells)  # image 7: 7 % 5 != 0
    everything = chula_cells(tmp_path)
    assert [c.y is None for c in everything].count(True) == 1  # the spherocyte: kept only with y=None


def test_compose_occluded_keeps_cells_visible():
    from napari_sickle.data.compose import compose_occluded, crops_from_arrays

    def disc(r, dark):
        im = np.full((2 * r + 10, 2 * r + 10, 3), 210, np.uint8)
        yy, xx = np.mgrid[: im.shape[0], : im.shape[1]]
        im[(yy - r - 5) ** 2 + (xx - r - 5) ** 2 <= r * r] = dark
        return im

    crops = crops_from_arrays([(disc(14, 90), "oval_disc"), (disc(12, 60), "echinocyte")])
    pats = compose_occluded(crops, 5, seed=1, min_cells=2, max_cells=3)
    assert len(pats) == 5
    for img, types, n in pats:
        assert img.dtype == np.uint8 and img.ndim == 3 and 2 <= n <= 3 and types.sum() >= 1


def test_augment_batch_gray_and_colour():
    import torch

    from napari_sickle.training.real_classifier import augment_batch

    x = torch.full((6, 3, 16, 16), 200, dtype=torch.uint8)
    x[:, :, 4:12, 4:12] = 90
    out = augment_batch(x, torch.Generator().manual_seed(0), p_gray=0.0, p_tint=1.0)
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 255
    assert float((out[:, 0] - out[:, 1]).abs().mean()) > 1.0  # gray input got a stain tint
    g = augment_batch(x, torch.Generator().manual_seed(0), p_gray=1.0)
    assert torch.allclose(g[:, 0], g[:, 1], atol=1e-4) or float((g[:, 0] - g[:, 1]).abs().max()) < 10


def test_augment_batch_defocus_and_pale_stain():
    """``blur_p`` defocuses canvases (softer edges), ``zoom`` > 1 shrinks the cell; the recipe's
    settings draw as the defaults."""
    import torch

    from napari_sickle.training.real_classifier import AUGMENT, augment_batch

    x = torch.full((6, 3, 32, 32), 200, dtype=torch.uint8)
    x[:, :, 8:24, 8:24] = 90

    def edge(t):  # the steepest step between neighbouring pixels, per canvas
        return (t[..., 1:] - t[..., :-1]).abs().amax(dim=(1, 2, 3))

    sharp = augment_batch(x, torch.Generator().manual_seed(0), p_gray=1.0, min_gain=1.0)
    soft = augment_batch(x, torch.Generator().manual_seed(0), p_gray=1.0, min_gain=1.0, blur_p=1.0, blur_sigma=3.0)
    assert float((edge(soft) / edge(sharp)).max()) < 0.8
    wide = augment_batch(x, torch.Generator().manual_seed(0), p_gray=1.0, min_gain=1.0, zoom=(1.5, 1.5))
    assert float((wide < 150).float().mean()) < 0.6 * float((sharp < 150).float().mean())  # the cell shrank
    old = augment_batch(x, torch.Generator().manual_seed(3))
    assert torch.equal(old, augment_batch(x, torch.Generator().manual_seed(3), **AUGMENT))


@pytest.mark.filterwarnings("ignore")
def test_tiny_training_run_writes_a_loadable_classifier(tmp_path):
    from napari_sickle.models.multilabel import RBCClassifier
    from napari_sickle.training import real_classifier as rc

    rng = np.random.default_rng(0)
    s = rc.INPUT_SIZE
    for split, n in (("train", 12), ("val", 6)):
        X = rng.integers(0, 255, (n + 2, 3, s, s), dtype=np.uint8)
        owner = np.concatenate([np.arange(n), [0, 1]])
        order = np.argsort(owner, kind="stable")
        Y = np.eye(6, dtype=np.float32)[np.arange(n) % 6]
        np.savez(
            tmp_path / f"{split}.npz",
            X=X[order],
            owner=owner[order],
            Y=Y,
            source=np.array(["xu", "chula"] * (n // 2)),
            kind=np.array(["single"] * n),
        )
    (tmp_path / "prepare.json").write_text('{"train": {}, "val": {}}')
    rc.train(tmp_path, epochs=1, regions_per_epoch=8, batch_regions=4, log=lambda *_: None)
    rc.train(tmp_path, epochs=1, resume=True, regions_per_epoch=8, batch_regions=4, log=lambda *_: None)
    rc.finish(tmp_path, tmp_path / "clf.pt", log=lambda *_: None)
    clf = RBCClassifier.from_checkpoint(tmp_path / "clf.pt")
    assert clf.input_size == s and clf.split == "cells" and clf.recipe["epochs"] == 1
    assert clf.recipe["augment"] == rc.AUGMENT  # the augmentation it was trained with
    img = np.full((80, 120, 3), 200, np.uint8)
    img[20:60, 20:60] = 90
    p = clf.predict_boxes(img, np.array([[10, 10, 70, 70], [60, 0, 120, 80]], np.float32))
    assert p.shape == (2, 6) and np.isfinite(p).all()
    assert clf.abnormal_proba(p).shape == (2,)


@pytest.mark.parametrize("split", ["cells", "unet"])
def test_training_canvases_match_the_inference_inputs(split):
    """The cached training canvases are what ``predict_boxes`` feeds the network (up to uint8
    rounding), with the rule-based and with the learned split (here an untrained network)."""
    import torch

    from napari_sickle.training import real_classifier as rc

    torch.manual_seed(0)
    clf = rc._new_clf(pretrained=False, split=split)
    if split == "unet":
        clf.config["splitter"]["trained"] = True
    img = np.full((90, 130, 3), 205, np.uint8)
    yy, xx = np.mgrid[:90, :130]
    for cy, cx in ((45, 40), (45, 82)):  # two touching discs: split into two cells
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 22**2] = (120, 80, 110)
    train = rc._normalise(torch.as_tensor(rc._canvases(clf, img)).float(), clf)
    crops, owner = clf.region_crops(img, np.array([[0, 0, 130, 90]], np.float32))
    assert train.shape == crops.shape and len(owner) == (2 if split == "cells" else len(train))
    std = torch.as_tensor(clf.config["std"]).view(1, 3, 1, 1) * 255
    assert float(((train - crops).abs() * std).max()) <= 1.0  # within one grey level


def test_attach_splitter_gives_a_trained_classifier_the_learned_split(tmp_path):
    """``attach-splitter``: the network and abnormal model stay as trained, the regions are
    split by the cache's splitter; a cache without one is refused with a clear message."""
    import json

    import torch

    from napari_sickle.models.checkpoint import save_checkpoint
    from napari_sickle.models.multilabel import RBCClassifier
    from napari_sickle.models.splitter import DEFAULT_SPLITTER, build_splitter
    from napari_sickle.training import real_classifier as rc

    torch.manual_seed(0)
    clf = rc._new_clf(pretrained=False, split="cells")
    save_checkpoint(clf.to_checkpoint(), tmp_path / "clf.pt")
    (tmp_path / "prepare.json").write_text(json.dumps({"config": {"split": "cells"}}))
    with pytest.raises(ValueError, match="no learned splitter"):
        rc.attach_splitter(tmp_path / "clf.pt", tmp_path, tmp_path / "out.pt", log=lambda *_: None)
    cfg = {**DEFAULT_SPLITTER, **rc.SPLITTER_NET, "trained": True}
    net = build_splitter(cfg)
    torch.save(net.state_dict(), tmp_path / "splitter.pt")
    (tmp_path / "prepare.json").write_text(json.dumps({"config": {"split": "unet", "splitter": cfg}, "splitter": {}}))
    rc.main(
        [
            "attach-splitter",
            "--cache",
            str(tmp_path),
            "--classifier",
            str(tmp_path / "clf.pt"),
            "--out",
            str(tmp_path / "out.pt"),
            "--occlusion",
            "ellipse-min",
        ]
    )
    out = RBCClassifier.from_checkpoint(tmp_path / "out.pt")
    assert out.split == "unet" and out.config["splitter"]["scale"] == rc.SPLITTER_NET["scale"]
    assert out.occlusion == out.recipe["occlusion"] == "ellipse-min"
    assert out.recipe["splitter"]["attached_after_training"]
    for k, v in net.state_dict().items():
        assert torch.equal(out.net.splitter.state_dict()[k], v)
    for k, v in clf.net.heads.state_dict().items():
        assert torch.equal(out.net.heads.state_dict()[k], v)
    img = np.full((80, 120, 3), 200, np.uint8)
    img[20:60, 20:60] = 90
    assert out.predict_boxes(img, np.array([[10, 10, 70, 70]], np.float32)).shape == (1, 6)
