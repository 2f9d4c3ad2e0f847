"""The glibc malloc tuning of the command-line entry points (napari_sickle._malloc)."""

import subprocess
import sys

import pytest

CODE = "from napari_sickle._malloc import tune_malloc; print(tune_malloc(), tune_malloc())"


def _run(env_value):
    import os

    env = dict(os.environ)
    env.pop("NAPARI_SICKLE_MALLOC", None)
    if env_value is not None:
        env["NAPARI_SICKLE_MALLOC"] = env_value
    return subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt exists only on Linux")
def test_tune_malloc_applies_once_and_can_be_switched_off():
    assert _run(None) == ["True", "True"]  # every mallopt call accepted; the second call is a no-op
    assert _run("default") == ["False", "False"]


def test_cpu_feature_batches_give_the_same_features_as_one_pass():
    """features() splits a batch so that at most CPU_FORWARD_IMAGES views go through the backbone."""
    import torch

    from napari_sickle.models import multilabel as mlm

    clf = mlm.new_classifier(pretrained=False, input_size=32, tta="d4")
    torch.manual_seed(0)
    crops = torch.randn(mlm.CPU_FORWARD_IMAGES // 8 * 2 + 3, 3, 32, 32)  # needs three forward passes
    calls = []
    f = clf.features(crops, batch_size=64, progress=lambda stage, done, total: calls.append(done))
    assert f.shape[:2] == (len(crops), 8)
    assert calls == [8, 16, 19]
    one = torch.cat([clf.features(crops[i : i + 1]) for i in (0, 18)])
    torch.testing.assert_close(f[[0, 18]], one, rtol=1e-4, atol=1e-4)
