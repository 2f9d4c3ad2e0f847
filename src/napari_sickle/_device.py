"""Device choice (:data:`napari_sickle.constants.DEVICES`: auto / cuda / mps / cpu)."""

from __future__ import annotations

from .constants import DEVICES


def resolve_device(name: str = "auto"):
    """Return a ``torch.device`` for ``name``; a clear error if it is not available."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("Device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'.")
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RuntimeError("Device 'mps' was requested but Apple MPS is not available; use 'auto' or 'cpu'.")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"Unknown device {name!r}; choose one of {', '.join(DEVICES)}.")


def detection_device(device):
    """Device for the torchvision detector: the CPU when ``device`` is Apple MPS (torchvision's
    detection ops lack MPS kernels), else ``device`` itself."""
    import torch

    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def autocast(device):
    """Mixed precision on CUDA, a no-op context elsewhere."""
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
