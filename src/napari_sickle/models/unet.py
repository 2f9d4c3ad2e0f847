"""A small U-Net for cell segmentation (foreground + cell boundaries).

The network predicts three classes per pixel: background (0), cell interior (1) and
cell boundary (2). Touching cells are split by seeding instances on the interior class
(pre- and post-processing: :mod:`napari_sickle.models.unet_processing`; tiled inference on
whole images: :func:`napari_sickle.analysis.segmentation.segment_unet`).

Configuration that travels with a checkpoint (``config``):
    depth, base_channels, in_channels, n_classes, scale (the image is resized by this
    factor before inference), normalization ("per_image": per-channel standardisation
    over the whole image).
"""

from __future__ import annotations

import torch
from torch import nn

CLASS_NAMES = ("background", "interior", "boundary")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` down-sampling steps and ``base_channels`` at full resolution.

    Inputs must have height and width divisible by ``2 ** depth`` (the tiled inference pads).
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 3, depth: int = 3, base_channels: int = 16):
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.depth = depth
        chs = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chs[:-1]:
            self.down.append(_block(cin, c))
            cin = c
        self.bottom = _block(chs[-2], chs[-1])
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(chs[i], chs[i - 1], 2, stride=2))
            self.dec.append(_block(chs[i - 1] * 2, chs[i - 1]))
        self.head = nn.Conv2d(chs[0], n_classes, 1)

    @property
    def multiple(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for blk in self.down:
            x = blk(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = up(x)
            x = dec(torch.cat([x, skip], dim=1))
        return self.head(x)


DEFAULT_CONFIG = {
    "depth": 3,
    "base_channels": 16,
    "in_channels": 3,
    "n_classes": 3,
    "class_names": list(CLASS_NAMES),
    "scale": 0.25,
    "normalization": "per_image",
}


def build_unet(config: dict | None = None) -> UNet:
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    return UNet(
        in_channels=int(cfg["in_channels"]),
        n_classes=int(cfg["n_classes"]),
        depth=int(cfg["depth"]),
        base_channels=int(cfg["base_channels"]),
    )


def load_unet(path_or_ckpt, device="cpu", fuse: bool = True):
    """Load a U-Net checkpoint (path or already-loaded dict) for inference -> (model in eval
    mode, config). Its batch norms are folded into the convolutions unless ``fuse=False``
    (``models.fuse``: the model can no longer train or be saved; build one with
    :func:`build_unet` and load the state dict for that)."""
    from .checkpoint import load_checkpoint
    from .fuse import prepare_inference

    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt, kind="unet")
    cfg = {**DEFAULT_CONFIG, **ckpt.get("config", {})}
    model = build_unet(cfg)
    model.load_state_dict(ckpt["state_dict"])
    prepare_inference(model.to(device), device, fold=fuse)
    return model, cfg
