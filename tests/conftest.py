import functools
import os
import tempfile
from pathlib import Path

import pytest

# Mesa's llvmpipe (OpenGL under Xvfb) and triton both bundle LLVM: importing triton after a
# napari viewer has made a GL context segfaults, and torch.optim imports it lazily (first
# optimizer). Import it before any viewer exists so in-process training works in any order.
try:  # pragma: no cover - depends on the torch build
    import torch._dynamo  # noqa: F401
    import triton.knobs  # noqa: F401
except Exception:
    pass

# Workers run synchronously nowhere: tests drive the real thread workers with qtbot.
os.environ.setdefault("NAPARI_SICKLE_CACHE", str(Path(__file__).parent / ".cache"))


@pytest.fixture(scope="session")
def sickle_data() -> Path:
    """The real datasets folder (SICKLE_DATA, default ../shared/data); skip if absent."""
    from napari_sickle._paths import sickle_data_dir

    d = sickle_data_dir()
    if d is None:
        pytest.skip("SICKLE_DATA is not set and ../shared/data does not exist")
    return d


@pytest.fixture(scope="session")
def fixtures_dir(sickle_data) -> Path:
    d = sickle_data / "fixtures"
    if not d.is_dir():
        pytest.skip(f"{d} is missing")
    return d


# ------------------------------------------------------------------ tiny RBC models for tests
TINY_RBC = {
    "detector": dict(
        epochs=1, iters_per_epoch=6, batch_size=2, crop_size=192, n_smears=2, smear_shape=(320, 480), lr=3e-4
    ),
    "classifier": dict(epochs=2, n_smears=2, smear_shape=(320, 480)),
}


def tiny_rbc_paths() -> tuple[Path, Path]:
    """A tiny detector + classifier trained on small simulated smears, once per test cache
    (NAPARI_SICKLE_CACHE/tiny-rbc) and reused by every test session."""
    from napari_sickle.models.checkpoint import CheckpointError
    from napari_sickle.models.registry import load_models
    from napari_sickle.training.demo import train_quick_default

    out = Path(os.environ["NAPARI_SICKLE_CACHE"]) / "tiny-rbc"
    det, clf = out / "detector.pt", out / "classifier.pt"
    try:
        load_models(det, clf, device="cpu")
    except (FileNotFoundError, CheckpointError):
        det.unlink(missing_ok=True)
        clf.unlink(missing_ok=True)
        train_quick_default(out, config=TINY_RBC, device="cpu")
    return det, clf


@pytest.fixture(scope="session")
def tiny_rbc_models():
    """The tiny RBC models, loaded on the CPU."""
    from napari_sickle.models.registry import load_models

    return load_models(*tiny_rbc_paths(), device="cpu")


@pytest.fixture
def tiny_zoo(monkeypatch, tmp_path):
    """The shipped models plus the tiny RBC pair registered as the default RBC model
    ``rbc-tiny-test``, in a temporary weights folder (the package is not touched)."""
    import shutil

    from napari_sickle.models import zoo

    real = zoo.weights_dir()
    wdir = tmp_path / "weights"
    wdir.mkdir()
    for p in real.iterdir():
        if p.suffix == ".pt":
            (wdir / p.name).symlink_to(p)
    if (real / zoo.MANIFEST).is_file():
        shutil.copyfile(real / zoo.MANIFEST, wdir / zoo.MANIFEST)
    det, clf = tiny_rbc_paths()
    shutil.copyfile(det, wdir / "rbc-tiny-test-detector.pt")
    shutil.copyfile(clf, wdir / "rbc-tiny-test-classifier.pt")
    monkeypatch.setattr(zoo, "weights_dir", lambda: wdir)
    zoo.register(
        "rbc-tiny-test",
        "rbc",
        "tiny test models (simulated smears)",
        {"detector": "rbc-tiny-test-detector.pt", "classifier": "rbc-tiny-test-classifier.pt"},
        default=True,
    )
    return wdir


# ------------------------------------------------------------------ small smear and tiny U-Net
@functools.lru_cache(maxsize=None)
def _sim_small():
    """A small simulated smear (300 x 400) with its instance labels."""
    from napari_sickle.data.simulate import simulate_smear

    return simulate_smear(seed=5, shape=(300, 400))


#: options of a U-Net that trains in seconds on tiny simulated smears (tests share them)
TINY_UNET = dict(
    device="cpu",
    simulated_shape=(160, 160),
    steps_per_epoch=2,
    batch_size=2,
    crop=64,
    scale=0.5,
    base_channels=8,
    depth=2,
)


@functools.lru_cache(maxsize=None)
def _tiny_unet() -> str:
    """A tiny U-Net checkpoint trained for a few steps on tiny simulated smears."""
    from napari_sickle.training.unet import train_unet

    out = Path(tempfile.mkdtemp(prefix="sickle-unet-"))
    res = train_unet("simulated", out, epochs=1, n_simulated=2, **TINY_UNET)
    return res["checkpoint"]


@pytest.fixture(scope="session")
def sim_small():
    return _sim_small()


@pytest.fixture(scope="session")
def tiny_unet():
    return _tiny_unet()


def disc_image(centres, radii, shape=(90, 150), outline=False, seed=0):
    """Grey background with dark (filled, or outline-style ring) discs: cells for split tests."""
    import numpy as np

    yy, xx = np.indices(shape)
    img = np.full(shape, 190.0)
    for (cy, cx), r in zip(centres, radii):
        d = np.hypot(yy - cy, xx - cx)
        if outline:
            img[(d <= r) & (d >= r - 3)] = 90.0
        else:
            img[d <= r] = 120.0
    img = img + np.random.default_rng(seed).normal(0, 1.5, shape)
    return np.clip(img, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)
