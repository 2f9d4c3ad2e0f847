"""Multi-label RBC classifier (Qiu et al.): frozen ImageNet backbone features on resized
region crops, six independent heads FC512 -> FC1 -> sigmoid, and a scikit-learn
gradient-boosting abnormal classifier on the six outputs, stored in the checkpoint.

Two things are configurable and recorded in the checkpoint's ``config`` (a checkpoint
without them loads with the original behaviour):

* ``crop``: how a region box becomes the network input. ``"stretch"`` (original): the box
  is resized to ``input_size`` x ``input_size`` with ``torchvision.ops.roi_align``, so a
  non-square box changes the cells' aspect ratio. ``"pad"`` (default for new models): the
  box is centred on a square canvas of ``max(w, h, min_side)`` native pixels filled with the
  median colour of the box's border, then resized (antialiased). Aspect ratios (oval vs
  elongated) are kept and cells have the same scale whether a patch holds one or four.
* ``tta``: the views of every input. ``"none"`` (original); ``"hflip"``: also mirrored
  left-right; ``"flip4"``: also mirrored up-down and rotated
  180 degrees; ``"d4"`` (default for new models): the eight symmetries of the square canvas
  (rotations by 90 degrees and their mirrors; a cell has no preferred orientation).
  ``features`` then returns (N, V, D); the heads train on every view as a separate row and
  predict the mean of the V views' logits. Measured in docs/results.md.
* ``split``: ``"none"`` (models trained before it existed): the region is one input.
  ``"cells"`` (default for new models): the region is split into its cells
  (:mod:`napari_sickle.models.cells`: edge foreground + distance-transform watershed), each
  cell is put alone on the region's background colour and classified, and the region's
  probability of each type is the largest over its cells (multiple-instance "max" rule,
  also used in training, so a missed split is still learned from). ``min_side`` is then
  the cell canvas side in native pixels and ``cell_split`` holds the split parameters.
  ``"unet"``: the same, with the cells found by a small learned splitter
  (:mod:`napari_sickle.models.splitter`, trained from the training crops by
  ``train_multilabel``) instead of the rule-based watershed.
* ``occlusion``: ``"none"`` (default; checkpoints without it): each cell is read as it is
  visible. ``"ellipse-min"``: a cell partly hidden by a neighbour is also read completed, and
  its Elongated/Sickle probability is the smaller of both readings
  (:mod:`napari_sickle.models.occlusion`).
* ``pool``: how the backbone's feature maps become one vector. ``"avg"`` (original):
  global average pooling of the last map. ``"avgmax-s4"`` (default for new models): average
  and max of the last map plus the max of an intermediate stage (efficientnet-lite0 stage 4,
  stride 16; ResNet ``layer3``). Max pooling keeps evidence of one abnormal cell among
  several normal ones in a multi-cell region.

Whole patches (training) and detector boxes (inference) go through exactly the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..constants import ABNORMAL_TYPES, IMAGENET_MEAN, IMAGENET_STD, RBC_TYPES
from .occlusion import OCCLUSION_RULES
from .region_inputs import (  # noqa: F401 (public here too)
    CELL_MIN_SIDE,
    DEFAULT_MIN_SIDE,
    canvas_tensor,
    cell_crops_from_boxes,
    crops_from_boxes,
    padded_crops_from_boxes,
    segment_max,
    whole_image_crop,
)

#: Paper setting: 224x224 crops. ``CPU_INPUT_SIZE`` is what an old checkpoint without an
#: ``input_size`` falls back to; new models use ``DEFAULT_INPUT_SIZE``.
PAPER_INPUT_SIZE = 224
CPU_INPUT_SIZE = 64
DEFAULT_INPUT_SIZE = 192
HIDDEN = 512
#: pooling of the backbone feature maps (see the module docstring)
POOLS = ("avg", "avgmax", "avgmax-s4")
DEFAULT_POOL = "avgmax-s4"
#: crop geometry (see the module docstring)
CROPS = ("stretch", "pad")
DEFAULT_CROP = "pad"
#: at most this many images (cells x views) per backbone forward pass on the CPU: larger
#: batches are slower (docs/performance.md, "Memory allocator")
CPU_FORWARD_IMAGES = 64
#: views of each region (see the module docstring)
TTAS = ("none", "hflip", "flip4", "d4")
DEFAULT_TTA = "d4"
#: whole region or one input per cell (see the module docstring)
SPLITS = ("none", "cells", "unet")
DEFAULT_SPLIT = "cells"
#: input size of a cell for ``split="cells"``, whose canvas side is ``CELL_MIN_SIDE`` (a 45-85 px cell on a
#: 112 px canvas resized to 160 px is magnified 1.43x; measured better than 128 px, docs/results.md)
CELL_INPUT_SIZE = 160
#: channels of the intermediate stage used by ``avgmax-s4``
_STAGE_CHANNELS = {"efficientnet-lite0": 112, "resnet18": 256, "resnet50": 1024, "resnet101": 1024}


def feature_dim(backbone: str, pool: str = "avg") -> int:
    """Length of the pooled feature vector of ``backbone`` with ``pool``."""
    from .backbones import FEATURE_BACKBONES

    if pool not in POOLS:
        raise ValueError(f"unknown pooling {pool!r}; choose one of {POOLS}")
    d = FEATURE_BACKBONES[backbone]
    if pool == "avg":
        return d
    return 2 * d + (_STAGE_CHANNELS[backbone] if pool == "avgmax-s4" else 0)


def pooled_features(backbone, x, pool: str = "avg"):
    """Pooled features (N, D) of normalised images ``x`` for a frozen feature extractor from
    ``backbones.build_feature_extractor`` (timm efficientnet or torchvision ResNet)."""
    import torch

    if pool == "avg":
        return backbone(x)
    if hasattr(backbone, "conv_stem"):  # timm efficientnet
        h = backbone.bn1(backbone.conv_stem(x))
        mid = None
        for j, blk in enumerate(backbone.blocks):
            h = blk(h)
            if j == 4:
                mid = h
        last = backbone.bn2(backbone.conv_head(h))
    else:  # torchvision ResNet
        h = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
        h = backbone.layer2(backbone.layer1(h))
        mid = backbone.layer3(h)
        last = backbone.layer4(mid)
    parts = [last.mean((2, 3)), last.amax((2, 3))]
    if pool == "avgmax-s4":
        parts.append(mid.amax((2, 3)))
    return torch.cat(parts, 1)


def n_views(tta: str) -> int:
    """Number of views of each input for a ``tta`` setting."""
    return {"none": 1, "hflip": 2, "flip4": 4, "d4": 8}[tta]


def tta_views(x, tta: str) -> list:
    """The views of a batch (B, C, H, W) for ``tta``: ``"hflip"`` adds the left-right mirror;
    ``"flip4"`` also the up-down mirror and the 180-degree rotation; ``"d4"`` the eight
    symmetries of the square (rotations by 90 degrees and their mirrors; square inputs)."""
    if tta == "none":
        return [x]
    if tta == "hflip":
        return [x, x.flip(-1)]
    if tta == "flip4":
        return [x, x.flip(-1), x.flip(-2), x.flip(-1, -2)]
    if tta == "d4":
        rots = [x.rot90(k, (-2, -1)) for k in range(4)]
        return rots + [r.flip(-1) for r in rots]
    raise ValueError(f"unknown tta {tta!r}; choose one of {TTAS}")


def _nn():
    import torch.nn as nn

    return nn


def make_heads(
    in_features: int,
    n_types: int = len(RBC_TYPES),
    hidden: int = HIDDEN,
    standardize: bool = False,
    dropout: float = 0.0,
):
    """Six heads, each Linear(in, 512) -> ReLU -> Linear(512, 1); returns logits (N, 6).

    ``standardize``: the features are first standardised with the buffers ``feat_mean`` /
    ``feat_std`` (set them with ``set_standardization`` from the training features; stored in
    the state dict). ``dropout`` applies before each head's first layer (training only).
    Features (N, V, D) (V views of each region, e.g. flips) give the mean of the V views'
    logits, (N, 6)."""
    import torch
    import torch.nn as nn

    class MultiLabelHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList(
                [
                    nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
                    for _ in range(n_types)
                ]
            )
            self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
            if standardize:
                self.register_buffer("feat_mean", torch.zeros(in_features))
                self.register_buffer("feat_std", torch.ones(in_features))

        def set_standardization(self, feats):
            f = torch.as_tensor(feats, dtype=torch.float32)
            f = f.reshape(-1, f.shape[-1])  # views of a region count as rows
            self.feat_mean.copy_(f.mean(0))
            if len(f) < 2:
                self.feat_std.fill_(1.0)
                return
            sd = f.std(0)
            # a feature (nearly) constant in the training set is only centred, not scaled, so it
            # cannot blow up on new data (as scikit-learn's StandardScaler does for constant ones)
            tiny = sd < max(1e-6, 1e-3 * float(sd.median()))
            self.feat_std.copy_(torch.where(tiny, torch.ones_like(sd), sd))

        def forward(self, feats):
            if feats.dim() == 3:  # (N, V, D): V views of each region -> mean logit over views
                n, v, d = feats.shape
                return self.forward(feats.reshape(n * v, d)).reshape(n, v, len(self.heads)).mean(1)
            if hasattr(self, "feat_mean"):
                feats = (feats - self.feat_mean) / self.feat_std
            feats = self.drop(feats)
            return torch.cat([h(feats) for h in self.heads], dim=1)

    return MultiLabelHeads()


def make_net(
    backbone: str = "efficientnet-lite0",
    pretrained: bool = True,
    weights_path=None,
    allow_download: bool = False,
    pool: str = "avg",
    standardize: bool = False,
    splitter: dict | None = None,
):
    """backbone (frozen feature extractor) + six heads as one ``nn.Module`` with
    ``.backbone``, ``.heads`` and ``.extract(x)`` (pooled features); ``forward`` returns
    logits (N, 6). ``splitter`` (settings of :mod:`napari_sickle.models.splitter`) adds the
    learned cell splitter as ``.splitter``, so its weights travel in the same state dict."""
    import torch.nn as nn

    from .backbones import build_feature_extractor

    dim = feature_dim(backbone, pool)

    class MultiLabelNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = build_feature_extractor(
                backbone, pretrained=pretrained, weights_path=weights_path, allow_download=allow_download
            )
            self.heads = make_heads(dim, standardize=standardize)
            self.pool = pool
            if splitter is not None:
                from .splitter import build_splitter

                self.splitter = build_splitter(splitter)

        def extract(self, x):
            return pooled_features(self.backbone, x, self.pool)

        def forward(self, x):
            return self.heads(self.extract(x))

    return MultiLabelNet()


@dataclass
class RBCClassifier:
    """A loaded multi-label classifier: network, configuration and abnormal model."""

    net: Any
    config: dict
    abnormal_model: Any = None
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    device: Any = None
    #: how :meth:`region_crops` makes the inputs: ``"batched"`` (all canvases of the boxes at once
    #: on the device, :mod:`napari_sickle.models.crops`) or ``"per-region"`` (one at a time on the
    #: host, :meth:`region_crops_per_region`); both give the same inputs (tests/test_crops.py)
    crop_path: str = "batched"
    #: where the batched path's rule-based cell split runs (``models.cells_torch.BACKENDS``):
    #: ``"auto"`` (batched on the device when it is CUDA, else on the host), ``"skimage"``, ``"torch"``
    cell_split_backend: str = "auto"

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
    @property
    def pool(self) -> str:
        return str(self.config.get("pool", "avg"))

    @property
    def tta(self) -> str:
        return str(self.config.get("tta", "none"))

    @property
    def split(self) -> str:
        return str(self.config.get("split", "none"))

    @property
    def occlusion(self) -> str:
        """How a cell half hidden by a neighbour is read (:mod:`napari_sickle.models.occlusion`):
        ``"none"`` (visible part only; checkpoints without the setting) or ``"ellipse-min"``."""
        return str(self.config.get("occlusion", "none"))

    def region_crops(self, image, boxes):
        """Network inputs for region boxes: ``(crops (M, 3, s, s), owner (M,))``, one input per
        box (``split="none"``, ``owner = arange``) or per cell of a box (``split="cells"`` or
        ``"unet"``), made by the :attr:`crop_path` path."""
        from .crops import region_crops

        return region_crops(self, image, boxes, self.crop_path)

    def region_crops_per_region(self, image, boxes):
        """:meth:`region_crops` one region at a time on the host (NumPy canvases)."""
        if self.split in ("cells", "unet"):
            mean, std = self.config.get("mean", IMAGENET_MEAN), self.config.get("std", IMAGENET_STD)
            return cell_crops_from_boxes(
                image,
                boxes,
                self.input_size,
                int(self.config.get("min_side", CELL_MIN_SIDE)),
                self.config.get("cell_split"),
                mean,
                std,
                device=self.device or "cpu",
                splitter=self.splitter_fn(),
                occlusion=self.occlusion,
            )
        crops = self.crops(image, boxes)
        return crops, np.arange(len(crops), dtype=np.int64)

    def splitter_fn(self):
        """``region -> labels`` of the learned splitter (``split="unet"``; a
        :class:`~napari_sickle.models.splitter.LearnedSplit`), else None (the rule-based
        :func:`napari_sickle.models.cells.split_cells`)."""
        if self.split != "unet":
            return None
        cfg = self.config.get("splitter") or {}
        if not cfg.get("trained"):
            raise RuntimeError(
                "this classifier's learned cell splitter (split='unet') is not trained yet; "
                "train it with napari_sickle.training.splitter.train_splitter or use split='cells'"
            )
        from .splitter import LearnedSplit

        return LearnedSplit(self.net.splitter, cfg)

    def crops(self, image, boxes):
        """One input per box (the whole region; ``split="none"``)."""
        mean, std = self.config.get("mean", IMAGENET_MEAN), self.config.get("std", IMAGENET_STD)
        if self.config.get("crop", "stretch") == "pad":
            return padded_crops_from_boxes(
                image,
                boxes,
                self.input_size,
                int(self.config.get("min_side", 0)),
                mean,
                std,
                device=self.device or "cpu",
            )
        return crops_from_boxes(image, boxes, self.input_size, mean, std, device=self.device or "cpu")

    def features(self, crops, batch_size: int = 64, progress=None, stage: str = "classify"):
        """Pooled backbone features as a float32 CPU tensor, computed in batches: (N, D), or
        (N, 2, D) with ``tta="hflip"`` (the region and its left-right mirror image);
        :meth:`head_probs` takes either."""
        import torch

        from .._device import autocast

        dev = self.device or torch.device("cpu")
        self.net.eval()
        out = []
        n = len(crops)
        batch_size = max(1, int(batch_size))
        if torch.device(dev).type == "cpu":  # all views of a batch go through the backbone at once
            batch_size = max(1, min(batch_size, CPU_FORWARD_IMAGES // n_views(self.tta)))
        with torch.inference_mode(), autocast(torch.device(dev) if isinstance(dev, str) else dev):
            for i in range(0, n, batch_size):
                x = crops[i : i + batch_size].to(dev, non_blocking=True)
                if torch.device(dev).type == "cuda":  # NHWC convolutions under fp16 autocast
                    x = x.contiguous(memory_format=torch.channels_last)
                views = tta_views(x, self.tta)
                f = pooled_features(self.net.backbone, torch.cat(views), self.pool).float()
                if len(views) > 1:
                    f = f.reshape(len(views), len(x), -1).transpose(0, 1).contiguous()
                out.append(f)  # stays on the device: one copy to the host after the loop
                if progress is not None:
                    progress(stage, min(i + batch_size, n), n)
        if not out:
            d = feature_dim(self.config["backbone"], self.pool)
            v = n_views(self.tta)
            return torch.zeros((0, v, d) if v > 1 else (0, d))
        return torch.cat(out).cpu()

    def head_probs(self, feats) -> np.ndarray:
        import torch

        self.net.eval()
        with torch.inference_mode():
            dev = next(self.net.heads.parameters()).device
            logits = self.net.heads(torch.as_tensor(feats, dtype=torch.float32).to(dev))
            return torch.sigmoid(logits).float().cpu().numpy()

    def region_probs(self, feats, owner, n: int) -> np.ndarray:
        """Per-region probabilities (n, 6) from the features of the inputs of ``n`` regions
        (``owner[i]``: region of input ``i``): the largest over each region's inputs, after
        the occlusion rule folded completed cells (``owner < 0``) into their visible cells."""
        from .occlusion import apply_rule

        probs, owner = apply_rule(self.head_probs(feats), owner, self.types)
        return segment_max(probs, owner, n)

    def predict_boxes(self, image, boxes, batch_size: int = 64, progress=None) -> np.ndarray:
        """Per-type probabilities (N, 6) for region boxes of an RGB uint8 image."""
        if len(boxes) == 0:
            return np.zeros((0, len(self.types)), dtype=np.float32)
        crops, owner = self.region_crops(image, boxes)
        return self.region_probs(self.features(crops, batch_size=batch_size, progress=progress), owner, len(boxes))

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
        return make_checkpoint(
            "multilabel",
            self.config["backbone"],
            sd,
            config=self.config,
            recipe=self.recipe,
            metrics=self.metrics,
            extra=ex,
        )

    @classmethod
    def from_checkpoint(cls, ckpt, device="cpu") -> "RBCClassifier":
        """Load from a path or a checkpoint dict (kind must be 'multilabel')."""
        from .checkpoint import CheckpointError, as_checkpoint, load_state, sklearn_from_bytes

        source = "checkpoint" if isinstance(ckpt, dict) else str(ckpt)
        ckpt = as_checkpoint(ckpt, "multilabel")
        cfg = dict(ckpt["config"])
        if (
            cfg.get("pool", "avg") not in POOLS
            or cfg.get("crop", "stretch") not in CROPS
            or cfg.get("tta", "none") not in TTAS
            or cfg.get("split", "none") not in SPLITS
            or cfg.get("occlusion", "none") not in OCCLUSION_RULES
        ):
            raise CheckpointError(
                f"Multi-label checkpoint: unknown pooling {cfg.get('pool')!r}, crop "
                f"{cfg.get('crop')!r}, tta {cfg.get('tta')!r}, split {cfg.get('split')!r} or occlusion "
                f"rule {cfg.get('occlusion')!r}; this napari-sickle knows pools {POOLS}, crops {CROPS}, "
                f"tta {TTAS}, splits {SPLITS} and occlusion rules {OCCLUSION_RULES}"
            )
        # shipped models leave out the frozen ImageNet backbone tensors: they come from the installed package
        packaged = cfg.get("backbone_weights") == "package"
        net = make_net(
            cfg["backbone"],
            pretrained=packaged,
            pool=cfg.get("pool", "avg"),
            standardize=bool(cfg.get("standardize", False)),
            splitter=cfg.get("splitter") if cfg.get("split") == "unet" else None,
        )
        state = ckpt["state_dict"]
        if packaged:
            state = {**{f"backbone.{k}": v for k, v in net.backbone.state_dict().items()}, **state}
        load_state(net, state, source, f"a multi-label classifier with backbone {cfg['backbone']!r}")
        blob = ckpt.get("extra", {}).get("abnormal_model_skops")
        abn = sklearn_from_bytes(blob, source) if blob is not None else None
        import torch

        dev = torch.device(device) if isinstance(device, str) else device
        return cls(
            net=net,
            config=cfg,
            abnormal_model=abn,
            recipe=dict(ckpt.get("recipe", {})),
            metrics=dict(ckpt.get("metrics", {})),
        ).to(dev)


def _checked_settings(pool: str, crop: str, tta: str, split: str, splitter: dict | None) -> dict | None:
    """Raise ValueError on an unknown ``pool`` / ``crop`` / ``tta`` / splitter setting; returns the
    learned splitter's settings for ``split="unet"``, else None."""
    if pool not in POOLS:
        raise ValueError(f"unknown pooling {pool!r}; choose one of {POOLS}")
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; choose one of {CROPS}")
    if tta not in TTAS:
        raise ValueError(f"unknown tta {tta!r}; choose one of {TTAS}")
    from .splitter import DEFAULT_SPLITTER

    if split == "unet":
        unknown = set(splitter or {}) - set(DEFAULT_SPLITTER)
        if unknown:
            raise ValueError(f"unknown splitter setting(s) {sorted(unknown)}; known: {sorted(DEFAULT_SPLITTER)}")
    return {**DEFAULT_SPLITTER, **(splitter or {})} if split == "unet" else None


def _cell_split_config(cell_split: dict | None) -> dict:
    """The rule-based cell split's parameters: ``models.cells.DEFAULT_SPLIT`` updated by ``cell_split``."""
    from .cells import DEFAULT_SPLIT as CELL_SPLIT

    unknown = set(cell_split or {}) - set(CELL_SPLIT)
    if unknown:
        raise ValueError(f"unknown cell_split parameter(s) {sorted(unknown)}; known: {sorted(CELL_SPLIT)}")
    return {**CELL_SPLIT, **(cell_split or {})}


def new_classifier(
    backbone: str = "efficientnet-lite0",
    input_size: int | None = None,
    pretrained: bool = True,
    weights_path=None,
    allow_download: bool = False,
    device="cpu",
    pool: str = DEFAULT_POOL,
    crop: str = DEFAULT_CROP,
    min_side: int | None = None,
    standardize: bool = True,
    tta: str = DEFAULT_TTA,
    split: str = DEFAULT_SPLIT,
    cell_split: dict | None = None,
    splitter: dict | None = None,
) -> RBCClassifier:
    """A fresh classifier: pretrained frozen backbone, untrained heads.

    The defaults are the recipe measured best (docs/results.md); ``split="none", pool="avg",
    crop="stretch", standardize=False, tta="none"`` gives the original model. ``input_size``
    and ``min_side`` default to 160 / 112 with ``split="cells"`` or ``"unet"`` and 192 / 160
    without. ``split="unet"``: the learned splitter (settings ``splitter``, see
    :mod:`napari_sickle.models.splitter`) is created untrained; ``train_multilabel`` trains
    it from the training crops before anything else."""
    import torch

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    cells = split in ("cells", "unet")
    input_size = int(input_size or (CELL_INPUT_SIZE if cells else DEFAULT_INPUT_SIZE))
    min_side = int((CELL_MIN_SIDE if cells else DEFAULT_MIN_SIDE) if min_side is None else min_side)

    split_cfg = _checked_settings(pool, crop, tta, split, splitter)
    net = make_net(
        backbone,
        pretrained=pretrained,
        weights_path=weights_path,
        allow_download=allow_download,
        pool=pool,
        standardize=standardize,
        splitter=split_cfg,
    )
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
        "pool": pool,
        "crop": crop,
        "min_side": int(min_side),
        "standardize": bool(standardize),
        "tta": tta,
        "split": split,
    }
    if cells:
        cfg["cell_split"] = _cell_split_config(cell_split)
    if split_cfg is not None:
        cfg["splitter"] = split_cfg
    dev = torch.device(device) if isinstance(device, str) else device
    return RBCClassifier(net=net, config=cfg).to(dev)
