"""Multi-label RBC classifier (Qiu et al.): frozen ImageNet backbone features on resized
region crops, six independent heads FC512 -> FC1 -> sigmoid, and a scikit-learn
gradient-boosting abnormal classifier on the six outputs, stored in the checkpoint.

Region crops are cut and resized in one batched call with ``torchvision.ops.roi_align``
(bilinear, area-averaged), so whole patches (training) and detector boxes (inference)
go through exactly the same resize.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..constants import ABNORMAL_TYPES, IMAGENET_MEAN, IMAGENET_STD, RBC_TYPES

#: Paper setting: 224x224 crops. The CPU default uses 64x64 (cells are 45-85 px across).
PAPER_INPUT_SIZE = 224
CPU_INPUT_SIZE = 64
HIDDEN = 512


def _nn():
    import torch.nn as nn

    return nn


def make_heads(in_features: int, n_types: int = len(RBC_TYPES), hidden: int = HIDDEN):
    """Six heads, each Linear(in, 512) -> ReLU -> Linear(512, 1); returns logits (N, 6)."""
    import torch
    import torch.nn as nn

    class MultiLabelHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList(
                [nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
                 for _ in range(n_types)]
            )

        def forward(self, feats):
            return torch.cat([h(feats) for h in self.heads], dim=1)

    return MultiLabelHeads()


def make_net(backbone: str = "efficientnet-lite0", pretrained: bool = True, weights_path=None,
             allow_download: bool = False):
    """backbone (frozen feature extractor) + six heads as one ``nn.Module`` with
    ``.backbone`` and ``.heads``; ``forward`` returns logits (N, 6)."""
    import torch.nn as nn

    from .backbones import FEATURE_BACKBONES, build_feature_extractor

    class MultiLabelNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = build_feature_extractor(backbone, pretrained=pretrained, weights_path=weights_path,
                                                    allow_download=allow_download)
            self.heads = make_heads(FEATURE_BACKBONES[backbone])

        def forward(self, x):
            return self.heads(self.backbone(x))

    return MultiLabelNet()


def crops_from_boxes(image, boxes, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu"):
    """Cut every box out of ``image`` and resize it to ``size`` x ``size`` in one batched call.

    image: (H, W, 3) uint8 (numpy or tensor); boxes: (N, 4) x_min, y_min, x_max, y_max in pixels
    (max exclusive). Returns a normalised float tensor (N, 3, size, size) on ``device``.
    """
    import torch
    from torchvision.ops import roi_align

    img = torch.as_tensor(np.ascontiguousarray(image), device=device)
    img = img.permute(2, 0, 1)[None].float().div_(255.0)
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), device=device)
    if len(b) == 0:
        return torch.zeros((0, 3, size, size), device=device)
    crops = roi_align(img, [b], output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    m = torch.as_tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, device=device).view(1, 3, 1, 1)
    return (crops - m) / s


def whole_image_crop(image, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu"):
    h, w = image.shape[:2]
    return crops_from_boxes(image, [[0, 0, w, h]], size, mean, std, device)


@dataclass
class RBCClassifier:
    """A loaded multi-label classifier: network, configuration and abnormal model."""

    net: Any
    config: dict
    abnormal_model: Any = None
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    device: Any = None

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self.config.get("types", RBC_TYPES))

    @property
    def input_size(self) -> int:
        return int(self.config.get("input_size", CPU_INPUT_SIZE))

    def to(self, device):
        self.net.to(device)
        self.device = device
        return self

    # -- features / probabilities ------------------------------------------------------
    def crops(self, image, boxes):
        return crops_from_boxes(image, boxes, self.input_size, self.config.get("mean", IMAGENET_MEAN),
                                self.config.get("std", IMAGENET_STD), device=self.device or "cpu")

    def features(self, crops, batch_size: int = 64, progress=None, stage: str = "classify"):
        """Pooled backbone features (N, D) as a float32 CPU tensor, computed in batches."""
        import torch

        from .._device import autocast

        dev = self.device or torch.device("cpu")
        self.net.eval()
        out = []
        n = len(crops)
        batch_size = max(1, int(batch_size))
        with torch.inference_mode(), autocast(torch.device(dev) if isinstance(dev, str) else dev):
            for i in range(0, n, batch_size):
                out.append(self.net.backbone(crops[i:i + batch_size].to(dev)).float().cpu())
                if progress is not None:
                    progress(stage, min(i + batch_size, n), n)
        if not out:
            from .backbones import FEATURE_BACKBONES

            return torch.zeros((0, FEATURE_BACKBONES[self.config["backbone"]]))
        return torch.cat(out)

    def head_probs(self, feats) -> np.ndarray:
        import torch

        self.net.eval()
        with torch.inference_mode():
            dev = next(self.net.heads.parameters()).device
            logits = self.net.heads(torch.as_tensor(feats, dtype=torch.float32).to(dev))
            return torch.sigmoid(logits).float().cpu().numpy()

    def predict_boxes(self, image, boxes, batch_size: int = 64, progress=None) -> np.ndarray:
        """Per-type probabilities (N, 6) for region boxes of an RGB uint8 image."""
        if len(boxes) == 0:
            return np.zeros((0, len(self.types)), dtype=np.float32)
        crops = self.crops(image, boxes)
        return self.head_probs(self.features(crops, batch_size=batch_size, progress=progress))

    def abnormal_proba(self, probs: np.ndarray) -> np.ndarray:
        """Probability that each region is abnormal (gradient boosting on the six outputs).

        Without a stored abnormal model, the largest abnormal-type probability is used."""
        probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(self.types))
        if len(probs) == 0:
            return np.zeros(0, dtype=np.float32)
        if self.abnormal_model is not None:
            classes = list(self.abnormal_model.classes_)
            if len(classes) == 1:
                return np.full(len(probs), float(classes[0]), dtype=np.float32)
            return self.abnormal_model.predict_proba(probs)[:, classes.index(1)].astype(np.float32)
        idx = [self.types.index(t) for t in ABNORMAL_TYPES if t in self.types]
        return probs[:, idx].max(axis=1).astype(np.float32)

    # -- checkpoints ---------------------------------------------------------------------
    def to_checkpoint(self, extra: dict | None = None) -> dict:
        from .checkpoint import make_checkpoint, sklearn_to_bytes

        ex = dict(extra or {})
        if self.abnormal_model is not None:
            # skops serialisation takes seconds; do it once per fitted model, not once per save
            cache = getattr(self, "_abnormal_bytes", None)
            if cache is None or cache[0] is not self.abnormal_model:
                cache = (self.abnormal_model, sklearn_to_bytes(self.abnormal_model))
                object.__setattr__(self, "_abnormal_bytes", cache)
            ex["abnormal_model_skops"] = cache[1]
        sd = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        return make_checkpoint("multilabel", self.config["backbone"], sd, config=self.config, recipe=self.recipe,
                               metrics=self.metrics, extra=ex)

    @classmethod
    def from_checkpoint(cls, ckpt, device="cpu") -> "RBCClassifier":
        """Load from a path or a checkpoint dict (kind must be 'multilabel')."""
        from .checkpoint import CheckpointError, as_checkpoint, sklearn_from_bytes

        ckpt = as_checkpoint(ckpt, "multilabel")
        cfg = dict(ckpt["config"])
        net = make_net(cfg["backbone"], pretrained=False)
        try:
            net.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"Multi-label checkpoint does not fit backbone {cfg['backbone']!r}: {exc}") from exc
        blob = ckpt.get("extra", {}).get("abnormal_model_skops")
        abn = sklearn_from_bytes(blob) if blob is not None else None
        import torch

        dev = torch.device(device) if isinstance(device, str) else device
        return cls(net=net, config=cfg, abnormal_model=abn, recipe=dict(ckpt.get("recipe", {})),
                   metrics=dict(ckpt.get("metrics", {}))).to(dev)


def new_classifier(backbone: str = "efficientnet-lite0", input_size: int = CPU_INPUT_SIZE, pretrained: bool = True,
                   weights_path=None, allow_download: bool = False, device="cpu") -> RBCClassifier:
    """A fresh classifier: pretrained frozen backbone, untrained heads."""
    import torch

    net = make_net(backbone, pretrained=pretrained, weights_path=weights_path, allow_download=allow_download)
    for p in net.backbone.parameters():
        p.requires_grad_(False)
    cfg = {
        "backbone": backbone,
        "types": list(RBC_TYPES),
        "input_size": int(input_size),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "hidden": HIDDEN,
        "pretrained": bool(pretrained),
        "type_threshold": 0.5,
    }
    dev = torch.device(device) if isinstance(device, str) else device
    return RBCClassifier(net=net, config=cfg).to(dev)
