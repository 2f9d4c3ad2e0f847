"""Batch norm folding (models/fuse.py): same outputs, no batch norm left, training untouched.

Tolerances: network outputs (features, logits, probabilities, scores) agree within
``rtol=1e-4, atol=1e-4`` after folding; detector boxes within ``rtol=1e-4, atol=1e-3`` px; the
feature maps of randomly initialised detector backbones within 1e-4 of their largest value.
Every comparison also checks that the unfolded network did have batch norms and that the
folded one has none, so a fold that did nothing cannot pass.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from napari_sickle.models.fuse import (
    FoldedModelError,
    conv_bn_pairs,
    fold_batchnorm,
    inference_copy,
    is_batchnorm,
    is_folded,
)

TOL = dict(rtol=1e-4, atol=1e-4)


def n_bn(module) -> int:
    return sum(is_batchnorm(m) for m in module.modules())


def randomize_bn(module, seed: int = 0):
    """Batch norm statistics and affine parameters far from the identity, so folding matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if is_batchnorm(m):
                c = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return module


def folded_copy(module):
    ref = copy.deepcopy(module).eval()
    out = fold_batchnorm(copy.deepcopy(module))
    assert n_bn(ref) > 0 and n_bn(out) == 0
    return ref, out


class SharedOutput(nn.Module):
    """conv -> bn, but the conv's output is also added back: folding would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn2(self.conv2(self.bn(y) + y))


def test_pairs_follow_the_data_not_the_names():
    m = SharedOutput()
    assert conv_bn_pairs(m) == [("conv2", "bn2")]  # conv's output is read twice: not folded
    randomize_bn(m)
    x = torch.randn(2, 3, 8, 8)
    ref = copy.deepcopy(m).eval()(x)
    f = fold_batchnorm(m)
    assert isinstance(f.bn, nn.BatchNorm2d) and isinstance(f.bn2, nn.Identity)
    torch.testing.assert_close(f(x), ref, **TOL)


def test_frozen_batchnorm_and_sequential_fallback():
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    bb = randomize_bn(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5))
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    x = torch.rand(1, 3, 64, 96)
    ref, out = folded_copy(bb)
    with torch.inference_mode():
        a, b = ref(x), out(x)
    for k in a:
        torch.testing.assert_close(b[k], a[k], **TOL)
    # a Sequential that fx cannot trace (a child branches on the data) still folds adjacent pairs
    seq = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), DataBranch()))
    assert conv_bn_pairs(seq) == [("0", "1")]
    x = torch.rand(1, 3, 16, 16)
    ref, out = folded_copy(seq)
    torch.testing.assert_close(out(x), ref(x), **TOL)


class DataBranch(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x  # data-dependent: torch.fx cannot trace it


def test_a_wrong_fold_is_caught():
    """The tolerance is tight enough to see a batch norm that is dropped instead of folded."""
    torch.manual_seed(0)
    m = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())).eval()
    x = torch.randn(1, 3, 16, 16)
    ref = m(x)
    dropped = copy.deepcopy(m)
    dropped[1] = nn.Identity()
    assert not torch.allclose(dropped(x), ref, **TOL)
    torch.testing.assert_close(fold_batchnorm(m)(x), ref, **TOL)


def test_folded_model_refuses_training_and_saving():
    m = fold_batchnorm(randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))))
    assert is_folded(m) and not m.training
    m(torch.zeros(1, 3, 8, 8))
    with pytest.raises(FoldedModelError, match="state dict"):
        m.state_dict()
    m.train()
    with pytest.raises(FoldedModelError, match="train"):
        m(torch.zeros(1, 3, 8, 8))


@pytest.fixture(scope="module")
def shipped_rbc():
    """The shipped default RBC pair loaded as training loads it (batch norm kept)."""
    from napari_sickle.models import zoo
    from napari_sickle.models.detector import RegionDetector
    from napari_sickle.models.multilabel import RBCClassifier

    base = zoo.default("rbc")
    det = RegionDetector.from_checkpoint(base.path("detector"))
    clf = RBCClassifier.from_checkpoint(base.path("classifier"))
    return det, clf


@pytest.fixture(scope="module")
def small_smear():
    from napari_sickle.data.simulate import simulate_smear

    return np.ascontiguousarray(simulate_smear(seed=7).image[:384, :512])


def test_detector_boxes_and_scores_unchanged(shipped_rbc, small_smear):
    import dataclasses

    det, _ = shipped_rbc
    ref_model, new_model = folded_copy(det.model)
    ref = dataclasses.replace(det, model=ref_model).detect(small_smear, score_threshold=0.3)
    new = dataclasses.replace(det, model=new_model).detect(small_smear, score_threshold=0.3)
    assert len(ref[0]) >= 5 and len(new[0]) == len(ref[0])
    order_ref, order_new = np.argsort(ref[1]), np.argsort(new[1])
    torch.testing.assert_close(
        torch.as_tensor(new[0][order_new]), torch.as_tensor(ref[0][order_ref]), rtol=1e-4, atol=1e-3
    )
    torch.testing.assert_close(torch.as_tensor(new[1][order_new]), torch.as_tensor(ref[1][order_ref]), **TOL)


def test_classifier_probabilities_unchanged(shipped_rbc, small_smear):
    import dataclasses

    det, clf = shipped_rbc
    boxes = det.detect(small_smear)[0][:20]
    ref_net, new_net = folded_copy(clf.net)
    ref = dataclasses.replace(clf, net=ref_net).predict_boxes(small_smear, boxes)
    new = dataclasses.replace(clf, net=new_net).predict_boxes(small_smear, boxes)
    assert len(boxes) >= 5
    torch.testing.assert_close(torch.as_tensor(new), torch.as_tensor(ref), **TOL)


def test_classifier_avgmax_pool_uses_folded_stem_and_head():
    """``pooled_features`` calls the backbone's ``bn1`` / ``bn2`` by name: folded, they keep
    timm's activation (BatchNormAct2d's ReLU6)."""
    from napari_sickle.models.multilabel import make_net

    net = make_net("efficientnet-lite0", pretrained=True, pool="avgmax-s4")
    ref, out = folded_copy(net)
    assert not isinstance(out.backbone.bn1, nn.Identity)  # the activation stays
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(out.extract(x), ref.extract(x), **TOL)
        torch.testing.assert_close(out(x), ref(x), **TOL)


def test_load_models_folds_and_training_loaders_do_not(shipped_rbc, small_smear):
    from napari_sickle.models.registry import load_models

    det, clf = shipped_rbc  # from_checkpoint: the loaders of training and fine-tuning
    assert n_bn(det.model) > 0 and n_bn(clf.net) > 0
    sd = det.to_checkpoint()["state_dict"]
    assert any(k.endswith("running_var") for k in sd)  # checkpoints keep batch norm
    m = load_models(device="cpu")  # the analysis' loader: folded, channels_last weights
    assert n_bn(m.detector.model) == 0 and n_bn(m.classifier.net) == 0
    assert is_folded(m.detector.model) and is_folded(m.classifier.net)
    stem = m.classifier.net.backbone.conv_stem.weight
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    with pytest.raises(FoldedModelError):
        m.classifier.to_checkpoint()
    plain = load_models(device="cpu", fuse=False, channels_last=False)
    assert n_bn(plain.detector.model) > 0 and n_bn(plain.classifier.net) > 0
    ref, new = plain.detector.detect(small_smear), m.detector.detect(small_smear)
    assert len(ref[0]) >= 5 and len(new[0]) == len(ref[0])
    i, j = np.argsort(ref[1]), np.argsort(new[1])
    torch.testing.assert_close(torch.as_tensor(new[0][j]), torch.as_tensor(ref[0][i]), rtol=1e-4, atol=1e-3)
    p_ref = plain.classifier.predict_boxes(small_smear, ref[0])
    torch.testing.assert_close(
        torch.as_tensor(m.classifier.predict_boxes(small_smear, ref[0])), torch.as_tensor(p_ref), **TOL
    )


def test_bm_model_folded_only_in_a_copy():
    from napari_sickle.analysis.bm import classify_cells
    from napari_sickle.models.bm import load_bm_model

    model = load_bm_model(None)
    before = n_bn(model.module)
    cells = list(np.random.default_rng(0).integers(0, 255, (3, 80, 80, 3), dtype=np.uint8))
    probs = classify_cells(cells, model, device="cpu", tta="none").probabilities
    assert before > 0 and n_bn(model.module) == before  # the caller's model keeps its batch norms
    first = inference_copy(model.module)
    assert n_bn(first) == 0 and inference_copy(model.module) is first  # made once
    assert first.classifier.weight is model.module.classifier.weight  # unfolded tensors are shared
    assert first.conv_stem.weight is not model.module.conv_stem.weight
    from napari_sickle.analysis.bm import preprocess

    with torch.inference_mode():
        ref = torch.softmax(model.module.eval()(preprocess(cells, model)), 1).numpy()
    torch.testing.assert_close(torch.as_tensor(probs), torch.as_tensor(ref), **TOL)
    with torch.no_grad():  # weights changed in place (training): a new copy
        model.module.classifier.bias.add_(1.0)
    copy_after = inference_copy(model.module)
    assert copy_after is not first
    x = preprocess(cells[:1], model)
    with torch.inference_mode():
        torch.testing.assert_close(copy_after(x), model.module(x), **TOL)


@pytest.mark.parametrize("arch", ["tiny_resnet", "tiny_regnet", "tiny_vgg"])
def test_bm_architectures_fold(arch):
    from napari_sickle.models.bm import build_bm_model

    torch.manual_seed(0)
    model = build_bm_model(arch, ("a", "b", "c"), pretrained=False)
    ref, out = folded_copy(randomize_bn(model.module))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(out(x), ref(x), **TOL)


@pytest.mark.parametrize("arch", ["mobilenet-v3", "resnet50-fpn-v2"])
def test_other_detector_architectures_fold(arch):
    """Batch norms in the backbone, the FPN (resnet50-fpn-v2) and the heads all fold."""
    from napari_sickle.models.detector import build_detector

    torch.manual_seed(0)
    det = randomize_bn(build_detector(arch, pretrained=False))
    ref, out = folded_copy(det)  # no batch norm left anywhere in the detector
    x = torch.rand(1, 3, 128, 160)
    with torch.inference_mode():
        a, b = ref.backbone(x), out.backbone(x)
    for k in a:  # 50 random layers: float32 rounding grows with the activations, so relative to their scale
        assert float((b[k] - a[k]).abs().max()) <= 1e-4 * float(a[k].abs().max())


class SideNet(nn.Module):
    """A traceable forward that uses one child; the other is called by other code."""

    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.side = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.ReLU())

    def forward(self, x):
        return self.main(x)


def test_children_forward_never_calls_are_folded():
    m = randomize_bn(SideNet())
    m.side.eval()  # finding the pairs leaves every module's mode as it was
    assert sorted(conv_bn_pairs(m)) == [("main.0", "main.1"), ("side.0", "side.1")]
    assert m.training and m.main[1].training and not m.side[1].training
    x = torch.randn(1, 3, 8, 8)
    ref, out = folded_copy(m)
    torch.testing.assert_close(out.side(x), ref.side(x), **TOL)


def test_classifier_with_learned_splitter_folds_it_too():
    """The splitter is a child that ``forward`` never calls; it is folded all the same."""
    from napari_sickle.models.multilabel import make_net
    from napari_sickle.models.splitter import DEFAULT_SPLITTER

    torch.manual_seed(0)
    net = make_net("resnet18", pretrained=False, splitter=dict(DEFAULT_SPLITTER))
    assert n_bn(net.splitter) > 0
    ref, out = folded_copy(randomize_bn(net))
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(out.splitter(x), ref.splitter(x), **TOL)


def test_resnet_classifier_avgmax_folds():
    from napari_sickle.models.multilabel import make_net

    torch.manual_seed(0)
    ref, out = folded_copy(randomize_bn(make_net("resnet18", pretrained=False, pool="avgmax-s4")))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(out(x), ref(x), **TOL)


def test_load_unet_folds_and_keeps_outputs():
    from napari_sickle.models.checkpoint import make_checkpoint
    from napari_sickle.models.unet import build_unet, load_unet

    torch.manual_seed(0)
    cfg = {"depth": 2, "base_channels": 8}
    net = randomize_bn(build_unet(cfg))
    ckpt = make_checkpoint("unet", "unet", net.state_dict(), config=cfg)
    folded, _ = load_unet(ckpt)
    plain, _ = load_unet(ckpt, fuse=False)
    assert n_bn(folded) == 0 and n_bn(plain) > 0
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), plain(x), **TOL)
