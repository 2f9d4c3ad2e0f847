import os
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
