"""The shipped-model registry: checksums, tampered and missing files, offline default loading."""

import json
import shutil

import pytest


def test_registry_verifies_and_refuses_tampered_file(tiny_zoo):
    from napari_sickle.models import zoo

    m = zoo.get("rbc-tiny-test")
    assert zoo.default("rbc").name == "rbc-tiny-test"
    p = m.path("detector")
    assert zoo.sha256_of(p) == m.files["detector"]["sha256"]
    with open(p, "ab") as fh:  # one appended byte
        fh.write(b"\0")
    with pytest.raises(zoo.ModelFileError, match="corrupt or was modified") as exc:
        m.path("detector")
    assert "\n" not in str(exc.value) and p.name in str(exc.value)


def test_missing_and_unknown_models_give_one_line(tiny_zoo):
    from napari_sickle.models import zoo
    from napari_sickle.models.registry import load_models

    (tiny_zoo / "rbc-tiny-test-classifier.pt").unlink()
    with pytest.raises(zoo.ModelFileError, match="is missing"):
        load_models(device="cpu")
    with pytest.raises(zoo.ModelFileError, match="unknown model 'no-such-model'"):
        load_models(device="cpu", model="no-such-model")
    for old in ("rbc-real-v1", "rbc-real-v2", "rbc-real-v3", "rbc-real-v4", "rbc-real-v5"):
        with pytest.raises(zoo.ModelFileError, match=f"'{old}' is no longer shipped; use rbc-real-v6") as exc:
            zoo.get(old)
        assert "\n" not in str(exc.value)


def test_corrupt_registered_file_is_refused_before_unpickling(tiny_zoo):
    from napari_sickle.models import zoo

    p = tiny_zoo / "rbc-tiny-test-detector.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(zoo.ModelFileError):
        zoo.resolve(None, "rbc", "detector")


def test_default_loads_offline_without_training(tiny_zoo, monkeypatch):
    """The default comes from the weights folder: no trainer is imported, no socket opened."""
    import socket
    import sys

    from napari_sickle.models.registry import load_models

    def no_network(*a, **k):
        raise AssertionError("network access while loading models")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delitem(sys.modules, "napari_sickle.training.demo", raising=False)
    stages = []
    models = load_models(device="cpu", progress=lambda s, d, t: stages.append((s, d, t)))
    assert models.name == "rbc-tiny-test"
    assert stages[-1] == ("loading models", 2, 2)
    assert "napari_sickle.training.demo" not in sys.modules


def test_task_mismatch_and_fp16_registration(tiny_zoo, tmp_path):
    """register_model stores fp16 tensors that load into the fp32 model."""
    import sys

    import torch

    from napari_sickle.models import zoo
    from napari_sickle.models.registry import load_models

    with pytest.raises(zoo.ModelFileError, match="not a wbc model"):
        zoo.resolve("rbc-tiny-test", "wbc", "classifier")
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "scripts"))
    try:
        import register_model
    finally:
        sys.path.pop(0)
    det = tiny_zoo / "rbc-tiny-test-detector.pt"
    clf = tiny_zoo / "rbc-tiny-test-classifier.pt"
    shutil.copyfile(det, tmp_path / "d.pt")
    shutil.copyfile(clf, tmp_path / "c.pt")
    assert (
        register_model.main(
            [
                "rbc-half",
                "--task",
                "rbc",
                "--description",
                "fp16 copy",
                f"detector={tmp_path / 'd.pt'}",
                f"classifier={tmp_path / 'c.pt'}",
            ]
        )
        == 0
    )
    sd = torch.load(tiny_zoo / "rbc-half-detector.pt", weights_only=True)["state_dict"]
    assert any(v.dtype == torch.float16 for v in sd.values())
    entry = next(m for m in json.loads((tiny_zoo / "manifest.json").read_text())["models"] if m["name"] == "rbc-half")
    assert not entry["default"]
    half = load_models(device="cpu", model="rbc-half")
    full = load_models(device="cpu")
    p_half = next(half.detector.model.parameters())
    p_full = next(full.detector.model.parameters())
    assert p_half.dtype == torch.float32
    assert torch.allclose(p_half, p_full, atol=1e-2)
