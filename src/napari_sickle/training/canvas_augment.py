"""Augmentation of the cached classifier canvases (uint8 (B, 3, S, S) torch batches) for
:mod:`napari_sickle.training.real_classifier`: d4 symmetry, stain/colour jitter in optical
density, grayscale, noise; optionally defocus and zoom. No Qt/napari imports."""

from __future__ import annotations

import numpy as np

#: the recipe's defocus / pale-stain / zoom settings of :func:`augment_batch` (``rbc-real-v6``'s
#: network: none of them; ``--blur-p 0.5 --min-gain 0.5`` and ``--zoom 0.9 1.6`` did not help on
#: BCCD photos, docs/models.md)
AUGMENT = {"blur_p": 0.0, "blur_sigma": 1.5, "min_gain": 0.75, "zoom": [1.0, 1.0]}


def augment_batch(
    x,
    gen,
    p_gray: float = 0.3,
    p_tint: float = 0.5,
    blur_p: float = 0.0,
    blur_sigma: float = 1.5,
    min_gain: float = 0.75,
    zoom=(1.0, 1.0),
):
    """Random d4 symmetry, stain/colour jitter and grayscale conversion of uint8 canvases
    (B, 3, S, S) -> float (B, 3, S, S) in 0..255 (torch, per image). The jitter works on optical
    density relative to the canvas background (its 95th percentile per channel): per-channel
    gain (a pink/purple tint for gray canvases with probability ``p_tint``), contrast (overall
    gain ``min_gain``-1.3: below 1, a paler stain) and brightness; then gray with probability
    ``p_gray``; light noise. With ``blur_p`` > 0 that share of the canvases is first defocused
    (torchvision Gaussian blur, one sigma in 0.3-``blur_sigma`` px per batch), as in photos
    taken with a weaker objective or slightly out of focus. ``zoom`` (lo, hi): each canvas shows
    a field lo-hi times as wide (above 1 the cell shrinks, its edge pixels continue the
    background), so how much of the canvas a cell fills says nothing about its source."""
    import torch

    x = x.float()
    B = x.shape[0]
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = x.rot90(k, (-2, -1))
    flip = torch.rand(B, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if tuple(zoom) != (1.0, 1.0):
        import torch.nn.functional as F

        z = zoom[0] + (zoom[1] - zoom[0]) * torch.rand(B, generator=gen)
        theta = torch.zeros(B, 2, 3)
        theta[:, 0, 0] = z
        theta[:, 1, 1] = z
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if blur_p > 0:
        from torchvision.transforms.functional import gaussian_blur

        pick = torch.rand(B, generator=gen) < blur_p
        sigma = 0.3 + (blur_sigma - 0.3) * float(torch.rand(1, generator=gen))
        if pick.any():
            ks = 2 * int(np.ceil(3 * sigma)) + 1
            x[pick] = gaussian_blur(x[pick], [ks, ks], [sigma, sigma])
    bg = torch.quantile(x.flatten(2), 0.95, dim=2)[:, :, None, None] + 1.0
    od = -torch.log(((x + 1.0) / bg).clamp(1e-3, 1.5))
    gray = (x[:, 0] - x[:, 1]).abs().mean((1, 2)) + (x[:, 1] - x[:, 2]).abs().mean((1, 2)) < 2.0
    tint = gray & (torch.rand(B, generator=gen) < p_tint)
    lo = torch.tensor([0.5, 1.0, 0.6])
    hi = torch.tensor([0.9, 1.6, 1.1])
    g_tint = lo + (hi - lo) * torch.rand(B, 3, generator=gen)
    g_plain = 0.85 + 0.3 * torch.rand(B, 3, generator=gen)
    gain = torch.where(tint[:, None], g_tint, g_plain) * (min_gain + (1.3 - min_gain) * torch.rand(B, 1, generator=gen))
    od = od * gain[:, :, None, None]
    bg_new = (
        bg
        * (0.85 + 0.2 * torch.rand(B, 1, 1, 1, generator=gen))
        * (0.96 + 0.08 * torch.rand(B, 3, 1, 1, generator=gen))
    )
    y = bg_new * torch.exp(-od) - 1.0
    to_gray = torch.rand(B, generator=gen) < p_gray
    y = torch.where(to_gray[:, None, None, None], y.mean(1, keepdim=True).expand_as(y), y)
    y = y + torch.randn(y.shape, generator=gen) * (torch.rand(B, 1, 1, 1, generator=gen) * 3.0)
    return y.clamp(0, 255)
