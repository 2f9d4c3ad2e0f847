"""Grad-CAM sanity check on simulated cells whose class is known to sit in one granule.

:func:`napari_sickle.data.bm_sim.simulate_bm_cells` draws cells whose class depends only on
the colour of one small granule at a known place (snapped to the ViT's patch grid), with a
neutral distractor granule elsewhere. :func:`train_tiny` fits a tiny model of one family on
them with a short Adam loop, and :func:`check` runs the product's
:func:`napari_sickle.analysis.bm.explain` and measures where the heatmap peaks fall. The
criteria and what they show: tests/test_gradcam_sanity.py and docs/bm.md.

The ViT is torchvision's ``VisionTransformer`` with the ``tiny_vit`` sizes but without
LayerNorm (:func:`vit_without_layernorm`): with LayerNorm, Grad-CAM on so shallow a ViT is
not faithful, so the check would test LayerNorm rather than the target layer and reshape.
"""

from __future__ import annotations

import numpy as np

#: cell size, class-granule radius and patch grid of the simulated cells
SIZE = 64
RADIUS = 4.0
GRID = 8
#: peak-to-granule tolerance beyond the radius, in px
TOL = SIZE / 10
FAMILIES = ["tiny_vgg", "tiny_regnet", "tiny_vit"]

#: (B, 1 + 64, C) ViT tokens -> (B, C, 8, 8) maps, each with one mistake (negative controls)
WRONG_GRIDS = {
    "transposed": lambda right: lambda tokens: right(tokens).transpose(2, 3),
    "class token kept": lambda right: (
        lambda tokens: tokens[:, :-1].reshape(tokens.shape[0], GRID, GRID, -1).permute(0, 3, 1, 2)
    ),
}


def simulated_cells(n_train: int = 48, n_test: int = 8):
    """(training, held-out) simulated cells, ``n_*`` per class (seeds 1 and 2)."""
    from ..data.bm_sim import simulate_bm_cells

    kw = dict(size=SIZE, marker_radius=RADIUS, grid=GRID)
    return simulate_bm_cells(n_per_class=n_train, seed=1, **kw), simulate_bm_cells(n_per_class=n_test, seed=2, **kw)


def vit_without_layernorm(n_classes: int):
    """``tiny_vit``'s torchvision ViT (1 block, patch 8, width 48) with LayerNorm replaced by Identity."""
    import torch.nn as nn
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=SIZE,
        patch_size=GRID,
        num_layers=1,
        num_heads=2,
        hidden_dim=48,
        mlp_dim=96,
        num_classes=n_classes,
        norm_layer=lambda dim: nn.Identity(),
    )


def build_tiny(arch: str, train, vit=vit_without_layernorm):
    """An untrained ``BMClassifier`` of ``arch`` with the training cells' channel statistics, and
    the standardised training images (N, 3, H, W); ``tiny_vit`` gets the network ``vit(n)``
    (``vit=None``: the product's ``tiny_vit``, with LayerNorm)."""
    import torch

    from ..models.bm import build_bm_model

    x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    model = build_bm_model(
        arch, train.class_names, pretrained=False, input_size=SIZE, mean=tuple(mean.tolist()), std=tuple(std.tolist())
    )
    if arch == "tiny_vit" and vit is not None:
        model.module = vit(len(train.class_names))
    return model, (x - mean[:, None, None]) / std[:, None, None]


def fit(net, xn, y, max_steps: int, lr: float, early_stop: bool = True) -> int:
    """Adam on random batches of 32; every 25 steps stop once training accuracy is >= 0.99
    (unless ``early_stop`` is False). Leaves ``net`` in eval mode; returns the steps taken."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for step in range(max_steps):
        net.train()
        idx = torch.randint(0, len(y), (32,))
        loss = torch.nn.functional.cross_entropy(net(xn[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if early_stop and (step + 1) % 25 == 0:
            net.eval()
            with torch.no_grad():
                if float((net(xn).argmax(1) == y).float().mean()) >= 0.99:
                    break
    net.eval()
    return step + 1


def train_tiny(arch: str, train, max_steps: int = 300, lr: float = 3e-3, seed: int = 0, vit=vit_without_layernorm):
    """A tiny model of ``arch`` fitted on the simulated ``train`` cells (:func:`fit`)."""
    import torch

    torch.manual_seed(seed)
    model, xn = build_tiny(arch, train, vit=vit)
    fit(model.module, xn, torch.from_numpy(train.labels).long(), max_steps, lr)
    return model


def peak_near(heatmaps, centres, radius: float, tol: float = TOL) -> np.ndarray:
    """Per heatmap: is its peak within ``radius + tol`` px of the centre?"""
    out = []
    for h, c in zip(heatmaps, centres):
        pk = np.unravel_index(np.argmax(h), h.shape)
        out.append(np.hypot(pk[0] - c[0], pk[1] - c[1]) <= radius + tol)
    return np.asarray(out)


def check(model, test) -> tuple[float, float, float, float]:
    """Held-out accuracy and the fractions of heatmap peaks near the class granule, on the
    distractor, and on the class granule itself (within its radius)."""
    from .bm import explain

    out = explain(list(test.images), model, method="gradcam", device="cpu", faithfulness=None)
    if not all(h.shape == (SIZE, SIZE) for h in out.heatmaps):
        raise ValueError(f"heatmaps are not {SIZE}x{SIZE}")
    accuracy = float((out.predicted == test.labels).mean())
    hits = peak_near(out.heatmaps, test.marker_centres, test.marker_radius).mean()
    on_distractor = peak_near(out.heatmaps, test.distractor_centres, test.marker_radius).mean()
    on_granule = peak_near(out.heatmaps, test.marker_centres, test.marker_radius, tol=0).mean()
    return accuracy, float(hits), float(on_distractor), float(on_granule)
