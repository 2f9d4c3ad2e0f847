"""Grad-CAM sanity test that can fail, for each family: CNN (VGG), RegNet and ViT.

Simulated 64x64 cells (``data/bm_sim.py``): the class depends only on the colour of one
small granule (radius 4 px) at a random, known place, snapped to the 8x8 patch grid (the
ViT's patch size); a neutral distractor granule sits on the other side of the cell. A tiny
model of each family is trained to high accuracy with a short Adam loop (this file checks
the CAM, not the training recipe, which tests/test_bm.py covers), then the product's
``explain`` computes Grad-CAM on 32 held-out cells with the product's own target layer and
(for the ViT) reshape transform (``BMClassifier.target_layers()`` /
``reshape_transform()``: ``encoder.layers[-1].ln_1``, class token dropped, 8x8 grid).

Pass criteria, fixed before any measurement: held-out accuracy >= 0.9; heatmap peak
within ``radius + 6.4`` px of the class granule for >= 80 % of cells; on the distractor
for <= 20 %. 80 %: a peak dropped at random in the cell lands that close to the granule
about 15 % of the time, on one of the two granules at random 50 %; with seed 0 the three
families measured 91-100 % (docs/bm.md). Added for the ViT after measuring: its peak must
also lie inside the granule (within its radius) for >= 80 % of cells, because a token grid
off by one token still lands within ``radius + 6.4`` px (measured: 75-100 %).

The ViT is torchvision's ``VisionTransformer`` with the ``tiny_vit`` sizes (1 block, patch
8, width 48) but **without LayerNorm** (``norm_layer=Identity``). With LayerNorm, a
1-block ViT trained from scratch learns the task (accuracy 0.97-1.0) but its Grad-CAM on
``ln_1`` lands near the granule in only 0-38 % of cells, for every target layer, depth, width,
learning rate and marker size tried (docs/bm.md): LayerNorm is scale-invariant, so the
first-order (gradient) view of the class token's path is not faithful in such a shallow
net. Without it, the same net passes with 100 % for 5 of 5 seeds, so this file tests what
it is meant to test: the target-layer choice, token order, class-token drop and grid of
the reshape. The negative controls below show that the same trained ViT with a wrong grid
(transposed, or the class token kept instead of dropped) fails these criteria.
"""
import numpy as np
import pytest

SIZE = 64
RADIUS = 4.0
GRID = 8
TOL = SIZE / 10
FAMILIES = ["tiny_vgg", "tiny_regnet", "tiny_vit"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: enough for these tiny models, and no thread stalls on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cells():
    from napari_sickle.data.bm_sim import simulate_bm_cells

    train = simulate_bm_cells(n_per_class=48, size=SIZE, seed=1, marker_radius=RADIUS, grid=GRID)
    test = simulate_bm_cells(n_per_class=8, size=SIZE, seed=2, marker_radius=RADIUS, grid=GRID)
    return train, test


def _vit_without_layernorm(n_classes):
    """``tiny_vit``'s torchvision ViT (1 block, patch 8, width 48) with LayerNorm replaced by Identity."""
    import torch.nn as nn
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=SIZE, patch_size=GRID, num_layers=1, num_heads=2, hidden_dim=48,
                             mlp_dim=96, num_classes=n_classes, norm_layer=lambda dim: nn.Identity())


def _build(arch, train):
    import torch

    from napari_sickle.models.bm import build_bm_model

    x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    model = build_bm_model(arch, train.class_names, pretrained=False, input_size=SIZE,
                           mean=tuple(mean.tolist()), std=tuple(std.tolist()))
    if arch == "tiny_vit":
        model.module = _vit_without_layernorm(len(train.class_names))
    return model, (x - mean[:, None, None]) / std[:, None, None]


def _train(arch, train, max_steps=300, lr=3e-3, seed=0):
    import torch

    torch.manual_seed(seed)
    model, xn = _build(arch, train)
    _fit(model.module, xn, torch.from_numpy(train.labels).long(), max_steps, lr)
    return model


def _fit(net, xn, y, max_steps, lr, early_stop=True) -> int:
    """Adam on random batches of 32; every 25 steps stop once training accuracy is >= 0.99
    (unless ``early_stop`` is False). Leaves ``net`` in eval mode; returns the steps taken.
    Also used by benchmarks/gradcam_sanity_sweep.py."""
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


@pytest.fixture(scope="module")
def trained(cells):
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = _train(arch, cells[0])
        return cache[arch]

    return get


def _near(heatmaps, centres, radius, tol=TOL):
    out = []
    for h, c in zip(heatmaps, centres):
        pk = np.unravel_index(np.argmax(h), h.shape)
        out.append(np.hypot(pk[0] - c[0], pk[1] - c[1]) <= radius + tol)
    return np.asarray(out)


def _check(model, test):
    """Held-out accuracy and the fractions of peaks near the class granule, on the distractor,
    and on the class granule itself (within its radius)."""
    from napari_sickle.analysis.bm import explain

    out = explain(list(test.images), model, method="gradcam", device="cpu", faithfulness=None)
    assert all(h.shape == (SIZE, SIZE) for h in out.heatmaps)
    accuracy = float((out.predicted == test.labels).mean())
    hits = _near(out.heatmaps, test.marker_centres, test.marker_radius).mean()
    on_distractor = _near(out.heatmaps, test.distractor_centres, test.marker_radius).mean()
    on_granule = _near(out.heatmaps, test.marker_centres, test.marker_radius, tol=0).mean()
    return accuracy, float(hits), float(on_distractor), float(on_granule)


@pytest.mark.parametrize("arch", FAMILIES)
def test_heatmap_peak_on_class_feature(arch, cells, trained):
    model = trained(arch)
    accuracy, hits, on_distractor, on_granule = _check(model, cells[1])
    assert accuracy >= 0.9, f"{arch} did not learn the task (held-out accuracy {accuracy:.2f})"
    assert hits >= 0.8, f"{arch}: heatmap peak on the class feature in only {hits:.0%} of cells"
    assert on_distractor <= 0.2, f"{arch}: heatmap peak on the distractor in {on_distractor:.0%}"
    if arch == "tiny_vit":
        # one token = one 8x8 patch = the granule's tile: a grid off by one token (e.g. the
        # class token kept) moves the peak 8 px, still within radius + 6.4, so also ask for
        # the peak on the granule itself
        assert on_granule >= 0.8, f"ViT: heatmap peak inside the granule in only {on_granule:.0%} of cells"


WRONG_GRIDS = {
    # (B, 1 + 64, C) tokens -> (B, C, 8, 8) maps, each with one mistake
    "transposed": lambda right: (lambda tokens: right(tokens).transpose(2, 3)),
    "class token kept": lambda right: (
        lambda tokens: tokens[:, :-1].reshape(tokens.shape[0], GRID, GRID, -1).permute(0, 3, 1, 2)),
}


@pytest.mark.parametrize("mistake", sorted(WRONG_GRIDS))
def test_vit_wrong_reshape_fails(mistake, cells, trained):
    """Negative control: the same trained ViT with a wrong token grid fails the ViT criteria."""
    model = trained("tiny_vit")
    wrong = WRONG_GRIDS[mistake](model.reshape_transform())
    model.reshape_transform = lambda: wrong  # instance attribute: explain() picks it up
    try:
        _, hits, _, on_granule = _check(model, cells[1])
    finally:
        del model.reshape_transform
    assert min(hits, on_granule) < 0.5, (
        f"ViT with a {mistake} grid still passed: peak near the granule {hits:.0%}, inside it {on_granule:.0%}")
