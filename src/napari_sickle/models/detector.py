"""Faster R-CNN region detector (torchvision) with selectable backbones.

Architectures (``ARCHS``):

* ``resnet101-fpn`` - the paper's backbone, built with ``resnet_fpn_backbone``;
* ``resnet50-fpn-v2`` - torchvision's ``fasterrcnn_resnet50_fpn_v2``;
* ``mobilenet-v3`` - ``fasterrcnn_mobilenet_v3_large_fpn``, fast on a CPU;
* ``efficientnet-lite0-fpn`` - timm ``tf_efficientnet_lite0`` features (ImageNet weights
  offline) + torchvision ``FeaturePyramidNetwork``; the CPU default.

Classes: background + ``class_names`` (default one class, "cell region").

Scale is handled here, not by torchvision's transform: an image is resized by
``config["scale"]`` (1.0 = native 1920x1080, as in the paper; the CPU default uses 0.5),
then the network sees it at exactly that size (the transform's min_size/max_size are set to
the input's own size). Images much larger than ``config["tile_size"]`` are tiled with
overlap and the tiles' boxes merged with NMS. All tiles of an image go through the
network in batches.

Region merge (a per-model setting, ``config["region_merge"]``; off by default): the paper's
ground truth is one box per *connected region* of cell pixels, so a touching group of cells is
one box. With ``{"method": "foreground", ...}`` every detection is replaced by the bounding box
of the connected region of cell pixels it sits on (cell pixels: differing from the local
background by more than ``delta`` gray levels; :mod:`napari_sickle.models.region_merge`), and
detections on the same region become one (best score). ``evaluate`` and ``analyze_smear`` both
go through :meth:`RegionDetector.detect`, so they apply the same setting. Models trained on
per-cell boxes (BCCD) keep it off. None (the default) leaves ``analyze_smear`` its own merge of
detections by Otsu cell pixels (simulated smears); ``False`` turns both off: the boxes are
regions already (detectors trained on real smears).

Cell diameter (a per-model setting, ``config["cell_diameter"]``; None for models trained at
one fixed ``scale``): the median cell diameter, as ``models.scale.estimate_cell_diameter``
measures it, that the model was trained at. Each image is then resized by
``cell_diameter / its own diameter`` (estimated from the image, or given by the caller's
``cell_diameter`` argument) instead of the fixed ``scale``, so smears of any magnification reach
the network with cells of the training size; boxes are mapped back to the input pixels.
``scale`` stays the fallback for an image whose diameter cannot be estimated.

Test-time views (a per-model setting, ``config["tta"]``: ``"none"`` by default, ``"flips"`` or
``"dihedral"``): the image is detected in each flipped (and transposed) view, the boxes are mapped
back and fused (weighted box fusion, :mod:`napari_sickle.models.detector_tta`; a box's score
is averaged over the views). Detection then costs the number of views in time. The region
merge, when set, runs on the fused boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .detector_tta import (  # noqa: F401 (public here too)
    TTA_MODES,
    TTA_VIEW_SCORE,
    TTA_VIEWS,
    _unview_boxes,
    _view,
    fuse_tta,
    tta_mode,
)
from .region_merge import (  # noqa: F401 (public here too)
    REGION_MERGE_DEFAULTS,
    apply_region_merge,
    background_deviation_mask,
    merge_into_regions,
)

ARCHS = ("efficientnet-lite0-fpn", "mobilenet-v3", "resnet50-fpn-v2", "resnet101-fpn")
DEFAULT_CLASS_NAMES = ("cell region",)
DETECTIONS_PER_IMG = 500


def _anchor_generator(n_levels: int):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    base = (16, 32, 64, 128, 256, 512)
    if n_levels == 3:  # mobilenet-v3: 3 maps, several sizes each
        sizes = ((16, 32, 64, 128, 256),) * 3
    else:
        sizes = tuple((s,) for s in base[:n_levels])
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * n_levels)


def _efficientnet_fpn_backbone(pretrained: bool, weights_path=None, out_channels: int = 128):
    import torch.nn as nn
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

    from .backbones import efficientnet_lite0

    class EffNetFPN(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = efficientnet_lite0(
                pretrained=pretrained, weights_path=weights_path, features_only=True, out_indices=(2, 3, 4)
            )
            chans = self.body.feature_info.channels()
            self.fpn = FeaturePyramidNetwork(chans, out_channels, extra_blocks=LastLevelMaxPool())
            self.out_channels = out_channels

        def forward(self, x):
            from collections import OrderedDict

            feats = self.body(x)
            return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))

    bb = EffNetFPN()
    # Freeze the stem and the first block (as torchvision does for its ResNet FPNs).
    for name, p in bb.body.named_parameters():
        if name.startswith(("conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2")):
            p.requires_grad_(False)
    return bb


def build_detector(
    arch: str = "efficientnet-lite0-fpn",
    num_classes: int = 2,
    pretrained: bool = True,
    weights_path=None,
    allow_download: bool = False,
    trainable_layers: int = 3,
):
    """A torchvision ``FasterRCNN`` for ``num_classes`` (including background).

    ``pretrained`` loads ImageNet weights into the backbone (offline; see backbones.py)."""
    import torchvision.models.detection as det
    from torchvision.ops import MultiScaleRoIAlign

    from .backbones import resolve_weights, torchvision_weights

    common = dict(
        min_size=1080,
        max_size=1920,
        box_detections_per_img=DETECTIONS_PER_IMG,
        rpn_pre_nms_top_n_test=2000,
        rpn_post_nms_top_n_test=1000,
        box_score_thresh=0.05,
    )
    if arch == "efficientnet-lite0-fpn":
        # Light CPU configuration: strides 8-64, 64 FPN channels, a 256-wide box head.
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import TwoMLPHead

        bb = _efficientnet_fpn_backbone(pretrained, weights_path, out_channels=64)
        roi = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
        anchors = AnchorGenerator(((16, 32), (48, 64), (96, 128), (192, 256)), ((0.5, 1.0, 2.0),) * 4)
        common.update(rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=600, box_batch_size_per_image=128)
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

        return det.FasterRCNN(
            bb,
            num_classes=None,
            rpn_anchor_generator=anchors,
            box_roi_pool=roi,
            box_head=TwoMLPHead(64 * 7 * 7, 256),
            box_predictor=FastRCNNPredictor(256, num_classes),
            **common,
        )
    if arch in ("mobilenet-v3", "resnet101-fpn", "resnet50-fpn-v2"):
        wb = None
        tv_name = {"mobilenet-v3": "mobilenet-v3", "resnet101-fpn": "resnet101", "resnet50-fpn-v2": "resnet50"}[arch]
        local = None
        if pretrained:
            local = resolve_weights(tv_name, weights_path, allow_download=allow_download)
            wb = torchvision_weights(tv_name) if weights_path is None else None
        if arch == "mobilenet-v3":
            model = det.fasterrcnn_mobilenet_v3_large_fpn(
                weights=None,
                weights_backbone=wb,
                num_classes=num_classes,
                trainable_backbone_layers=trainable_layers if pretrained else 6,
                **common,
            )
        elif arch == "resnet50-fpn-v2":
            model = det.fasterrcnn_resnet50_fpn_v2(
                weights=None,
                weights_backbone=wb,
                num_classes=num_classes,
                trainable_backbone_layers=trainable_layers if pretrained else 5,
                **common,
            )
        else:
            from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

            bb = resnet_fpn_backbone(
                backbone_name="resnet101", weights=wb, trainable_layers=trainable_layers if pretrained else 5
            )
            model = det.FasterRCNN(bb, num_classes=num_classes, **common)
        if pretrained and weights_path is not None:
            _load_local_backbone(model, arch, local)
        return model
    raise ValueError(f"Unknown detector architecture {arch!r}; choose one of {ARCHS}.")


def _load_local_backbone(model, arch, path):
    """Load an ImageNet classification state dict from a local file into the detector's body."""
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    body = model.backbone.body
    if arch == "mobilenet-v3":
        sd = {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
    missing, _ = body.load_state_dict(sd, strict=False)
    if len(missing) == len(body.state_dict()):
        raise ValueError(f"Weights file {path} does not fit the {arch} backbone.")


def default_config(
    arch: str = "efficientnet-lite0-fpn", class_names=DEFAULT_CLASS_NAMES, scale: float = 0.5, tile_size: int = 2048
) -> dict:
    return {
        "arch": arch,
        "class_names": list(class_names),
        "scale": float(scale),
        "tile_size": int(tile_size),
        "tile_overlap": 128,
        "min_size": 1080,
        "max_size": 1920,
        "detections_per_img": DETECTIONS_PER_IMG,
        "region_merge": None,
        "tta": "none",
        "cell_diameter": None,
    }


@dataclass
class RegionDetector:
    """A loaded detector plus its configuration."""

    model: Any
    config: dict
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    device: Any = None

    @property
    def class_names(self) -> list[str]:
        return list(self.config.get("class_names", DEFAULT_CLASS_NAMES))

    def to(self, device):
        self.model.to(device)
        self.device = device
        return self

    def to_checkpoint(self, extra: dict | None = None) -> dict:
        from .checkpoint import make_checkpoint

        sd = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return make_checkpoint(
            "detector",
            self.config["arch"],
            sd,
            config=self.config,
            recipe=self.recipe,
            metrics=self.metrics,
            extra=extra,
        )

    @classmethod
    def from_checkpoint(cls, ckpt, device="cpu") -> "RegionDetector":
        import torch

        from .checkpoint import as_checkpoint, load_state

        source = "checkpoint" if isinstance(ckpt, dict) else str(ckpt)
        ckpt = as_checkpoint(ckpt, "detector")
        cfg = dict(ckpt["config"])
        model = build_detector(cfg["arch"], num_classes=len(cfg["class_names"]) + 1, pretrained=False)
        load_state(model, ckpt["state_dict"], source, f"a detector of architecture {cfg['arch']!r}")
        dev = torch.device(device) if isinstance(device, str) else device
        return cls(
            model=model, config=cfg, recipe=dict(ckpt.get("recipe", {})), metrics=dict(ckpt.get("metrics", {}))
        ).to(dev)

    # -- inference -----------------------------------------------------------------------
    def detect(
        self,
        image,
        score_threshold: float = 0.5,
        nms_iou: float = 0.5,
        batch_size: int = 4,
        progress=None,
        stage: str = "detect",
        region_merge=None,
        tta=None,
        cell_diameter=None,
    ):
        """Detect regions in an (H, W, 3) uint8 image.

        ``region_merge``: None uses the checkpoint's ``config["region_merge"]`` (see
        :func:`apply_region_merge`), False turns it off, a dict overrides it.
        ``tta``: None uses the checkpoint's ``config["tta"]`` (see :func:`fuse_tta`), or one of
        ``TTA_MODES``.
        ``cell_diameter``: the image's cell diameter in px, for a model with a
        ``config["cell_diameter"]`` (None: estimated from the image).
        Returns (boxes (N,4) float32 in input pixels, scores (N,), class ids (N,) 1-based)."""
        import torch

        img = torch.as_tensor(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        scales = [self.image_scale(image, cell_diameter)]
        return self.detect_tensors(
            [img], score_threshold, nms_iou, batch_size, progress, stage, region_merge, tta, scales=scales
        )[0]

    def image_scale(self, image, cell_diameter=None) -> float:
        """Resize factor for one (H, W, 3) image: ``config["cell_diameter"]`` / the image's cell
        diameter (``cell_diameter``, else estimated) when the model has a training diameter,
        else (or when no diameter can be estimated) ``config["scale"]``."""
        target = self.config.get("cell_diameter")
        if not target:
            return float(self.config.get("scale", 1.0))
        from .scale import estimate_cell_diameter, rescale_factor

        d = cell_diameter if cell_diameter else estimate_cell_diameter(np.asarray(image))
        if d is None:
            return float(self.config.get("scale", 1.0))
        return rescale_factor(float(d), float(target))

    def detect_tensors(
        self,
        images,
        score_threshold=0.5,
        nms_iou=0.5,
        batch_size=4,
        progress=None,
        stage="detect",
        region_merge=None,
        tta=None,
        scales=None,
        cell_diameter=None,
    ):
        """Like :meth:`detect` for a list of (3, H, W) float tensors in [0, 1]. ``scales``: a
        resize factor per image (default: :meth:`image_scale` of each)."""
        if scales is None:
            scales = [
                self.image_scale(img.mul(255.0).permute(1, 2, 0).cpu().numpy(), cell_diameter)
                if self.config.get("cell_diameter")
                else float(self.config.get("scale", 1.0))
                for img in images
            ]
        mode = tta_mode(self.config.get("tta") if tta is None else tta)
        if mode != "none":
            return self._detect_tta(
                images, mode, score_threshold, nms_iou, batch_size, progress, stage, region_merge, scales
            )
        import torch

        dev = self.device or torch.device("cpu")
        dev = torch.device(dev) if isinstance(dev, str) else dev
        merge = self.config.get("region_merge") if region_merge is None else region_merge
        tile = int(self.config.get("tile_size", 2048))
        overlap = int(self.config.get("tile_overlap", 128))
        self.model.eval()
        self.model.roi_heads.score_thresh = min(float(score_threshold), 0.05)
        self.model.roi_heads.nms_thresh = float(nms_iou)
        self.model.roi_heads.detections_per_img = int(self.config.get("detections_per_img", DETECTIONS_PER_IMG))
        jobs = _tile_jobs(images, scales, tile, overlap)
        per_image = self._run_tiles(jobs, len(images), batch_size, dev, progress, stage)
        return [
            _finish_image(img, per_image[idx], float(scales[idx]), score_threshold, nms_iou, merge)
            for idx, img in enumerate(images)
        ]

    def _run_tiles(self, jobs, n_images, batch_size, dev, progress, stage):
        """The network on every (image index, tile, x0, y0) job, tiles of one size batched
        together; returns per image a list of (boxes in the scaled image, scores, labels)."""
        import torch

        from .._device import autocast

        per_image = [[] for _ in range(n_images)]
        total = len(jobs)
        done = 0
        with torch.inference_mode(), autocast(dev):
            # group tiles of equal size so each batch shares one size
            i = 0
            while i < total:
                shp = jobs[i][1].shape
                batch = [jobs[i]]
                j = i + 1
                while j < total and len(batch) < batch_size and jobs[j][1].shape == shp:
                    batch.append(jobs[j])
                    j += 1
                hh, ww = shp[-2:]
                self.model.transform.min_size = (int(min(hh, ww)),)
                self.model.transform.max_size = int(max(hh, ww))
                outs = self.model([b[1].to(dev) for b in batch])
                for (idx, _, x0, y0), o in zip(batch, outs):
                    bx = o["boxes"].float().cpu()
                    bx[:, [0, 2]] += x0
                    bx[:, [1, 3]] += y0
                    per_image[idx].append((bx, o["scores"].float().cpu(), o["labels"].cpu()))
                done += len(batch)
                if progress is not None:
                    progress(stage, done, total)
                i = j
        return per_image

    def _detect_tta(self, images, mode, score_threshold, nms_iou, batch_size, progress, stage, region_merge, scales):
        """Detect on every flipped/rotated view of each image, map the boxes back and fuse them
        (:func:`fuse_tta`); then the score threshold and the region merge as in :meth:`detect_tensors`."""
        merge = self.config.get("region_merge") if region_merge is None else region_merge
        n_views = len(TTA_VIEWS[mode])
        views = [_view(img, v) for img in images for v in TTA_VIEWS[mode]]
        raw = self.detect_tensors(
            views,
            min(float(score_threshold), TTA_VIEW_SCORE),
            nms_iou,
            batch_size,
            progress,
            stage,
            region_merge=False,
            tta="none",
            scales=[s for s in scales for _ in range(n_views)],
        )
        results = []
        for i, img in enumerate(images):
            h, w = img.shape[-2:]
            per_view = [
                (_unview_boxes(b, v, h, w), s, lab)
                for v, (b, s, lab) in zip(TTA_VIEWS[mode], raw[i * n_views : (i + 1) * n_views])
            ]
            b, s, lab = fuse_tta(per_view, nms_iou=nms_iou)
            keep = s >= score_threshold
            out = (b[keep], s[keep], lab[keep])
            if merge:
                out = apply_region_merge(img.float().mean(0).mul(255.0).cpu().numpy(), *out, merge)
            results.append(out)
        return results


def _tile_jobs(images, scales, tile: int, overlap: int):
    """(image index, tile tensor, x0, y0) for every tile of every image resized by its scale."""
    import torch.nn.functional as F

    jobs = []
    for idx, img in enumerate(images):
        scale = float(scales[idx])
        if scale != 1.0:
            h, w = img.shape[-2:]
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        h, w = img.shape[-2:]
        for y0, x0, y1, x1 in _tiles(h, w, tile, overlap):
            jobs.append((idx, img[:, y0:y1, x0:x1], x0, y0))
    return jobs


def _finish_image(img, parts, scale: float, score_threshold, nms_iou, merge):
    """One image's tile detections -> (boxes, scores, labels) in input pixels: score threshold,
    NMS across tiles, sorted by score, mapped back by ``scale``, clipped, region merge."""
    import torch
    from torchvision.ops import batched_nms

    boxes = torch.cat([p[0] for p in parts]) if parts else torch.zeros((0, 4))
    scores = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0)
    labels = torch.cat([p[2] for p in parts]) if parts else torch.zeros(0, dtype=torch.int64)
    keep = scores >= score_threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if len(parts) > 1 and len(boxes):
        k = batched_nms(boxes, scores, labels, nms_iou)
        boxes, scores, labels = boxes[k], scores[k], labels[k]
    order = torch.argsort(scores, descending=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    if scale != 1.0:
        boxes = boxes / scale
    h, w = img.shape[-2:]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, h)
    out = (boxes.numpy().astype(np.float32), scores.numpy().astype(np.float32), labels.numpy().astype(np.int64))
    if merge:  # the checkpoint's "one box per connected region" post-processing
        out = apply_region_merge(img.float().mean(0).mul(255.0).cpu().numpy(), *out, merge)
    return out


def _tiles(h: int, w: int, tile: int, overlap: int):
    """Tile windows (y0, x0, y1, x1); one window when the image fits in ``tile``."""

    def starts(n):
        if n <= tile:
            return [0]
        step = max(1, tile - overlap)
        s = list(range(0, n - tile, step))
        s.append(n - tile)
        return s

    return [(y, x, min(y + tile, h), min(x + tile, w)) for y in starts(h) for x in starts(w)]


def new_detector(
    arch: str = "efficientnet-lite0-fpn",
    class_names=DEFAULT_CLASS_NAMES,
    scale: float = 0.5,
    pretrained: bool = True,
    weights_path=None,
    allow_download: bool = False,
    device="cpu",
    tile_size: int = 2048,
) -> RegionDetector:
    import torch

    model = build_detector(
        arch,
        num_classes=len(class_names) + 1,
        pretrained=pretrained,
        weights_path=weights_path,
        allow_download=allow_download,
    )
    dev = torch.device(device) if isinstance(device, str) else device
    return RegionDetector(model=model, config=default_config(arch, class_names, scale, tile_size)).to(dev)
