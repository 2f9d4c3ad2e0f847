"""Grad-CAM sanity test that can fail, for each family: CNN (VGG), RegNet and ViT.

Simulated 64x64 cells (``data/bm_sim.py``; the training loop and peak measures are
``analysis/gradcam_check.py``): the class depends only on the colour of one
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

import pytest

from napari_sickle.analysis.gradcam_check import FAMILIES, WRONG_GRIDS, check, simulated_cells, train_tiny


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
    return simulated_cells()


@pytest.fixture(scope="module")
def trained(cells):
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = train_tiny(arch, cells[0])
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", FAMILIES)
def test_heatmap_peak_on_class_feature(arch, cells, trained):
    model = trained(arch)
    accuracy, hits, on_distractor, on_granule = check(model, cells[1])
    assert accuracy >= 0.9, f"{arch} did not learn the task (held-out accuracy {accuracy:.2f})"
    assert hits >= 0.8, f"{arch}: heatmap peak on the class feature in only {hits:.0%} of cells"
    assert on_distractor <= 0.2, f"{arch}: heatmap peak on the distractor in {on_distractor:.0%}"
    if arch == "tiny_vit":
        # one token = one 8x8 patch = the granule's tile: a grid off by one token (e.g. the
        # class token kept) moves the peak 8 px, still within radius + 6.4, so also ask for
        # the peak on the granule itself
        assert on_granule >= 0.8, f"ViT: heatmap peak inside the granule in only {on_granule:.0%} of cells"


@pytest.mark.parametrize("mistake", sorted(WRONG_GRIDS))
def test_vit_wrong_reshape_fails(mistake, cells, trained):
    """Negative control: the same trained ViT with a wrong token grid fails the ViT criteria."""
    model = trained("tiny_vit")
    wrong = WRONG_GRIDS[mistake](model.reshape_transform())
    model.reshape_transform = lambda: wrong  # instance attribute: explain() picks it up
    try:
        _, hits, _, on_granule = check(model, cells[1])
    finally:
        del model.reshape_transform
    assert min(hits, on_granule) < 0.5, (
        f"ViT with a {mistake} grid still passed: peak near the granule {hits:.0%}, inside it {on_granule:.0%}"
    )
