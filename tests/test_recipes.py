"""Training recipes: tiny seeded runs of every trainer reproduce the recorded losses and
metrics (``benchmarks/recipe_baseline.py``)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "tests" / "data" / "recipe_baseline.json"


def _baseline_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import recipe_baseline
    finally:
        sys.path.pop(0)
    return recipe_baseline


@pytest.mark.parametrize("trainer", ["detector", "multilabel", "unet", "bm", "protocol", "real_classifier"])
def test_trainers_reproduce_the_recorded_numbers(trainer):
    import torch

    recorded = json.loads(BASELINE.read_text())
    if recorded["torch"] != torch.__version__:  # other versions may sum floats in another order
        pytest.skip(f"numbers recorded with torch {recorded['torch']}")
    threads = torch.get_num_threads()
    try:
        got = _baseline_module().run([trainer])[trainer]
    finally:
        torch.set_num_threads(threads)
    want = recorded["runs"][trainer]
    assert sorted(got) == sorted(want)
    for run, numbers in want.items():
        assert sorted(got[run]) == sorted(numbers), run
        for key, value in numbers.items():
            if value is None:
                assert got[run][key] is None, (run, key)
            else:
                assert got[run][key] == pytest.approx(value, abs=1e-6), (run, key)


def test_unknown_option_is_refused_with_the_valid_keys():
    from napari_sickle.training.recipes import DetectorRecipe, RecipeError, UNetRecipe, recipe_kwargs

    with pytest.raises(RecipeError, match=r"unknown detector training option\(s\) lr_max; valid: .*crop_size"):
        DetectorRecipe.from_options({"lr_max": 1e-3})
    with pytest.raises(TypeError, match="unknown U-Net training option"):  # also a TypeError, as before
        UNetRecipe.from_options({"n_epochs": 3})
    kw = recipe_kwargs("unet", {"device": "cpu", "epochs": None, "backbone": None, "seed": 0, "lr": "0.01"})
    assert kw["device"] == "cpu" and kw["recipe"] == UNetRecipe(lr=0.01)
    assert recipe_kwargs("multilabel-protocol", {"n_test_patches": 4}) == {"n_test_patches": 4}


def test_option_values_are_coerced_and_recorded_as_plain_values():
    from napari_sickle.training.recipes import DetectorRecipe, MultilabelRecipe

    r = DetectorRecipe.from_options({"ema": 1, "smear_shape": "(128, 160)", "rot90": "yes", "tta": "flips"})
    assert r.ema == 1.0 and isinstance(r.ema, float) and r.smear_shape == (128, 160) and r.rot90 is True
    assert r.asdict()["smear_shape"] == [128, 160]
    assert r.resolved().scale == 0.5 and r.replace(backbone="resnet50-fpn").resolved().scale == 1.0
    with pytest.raises(AttributeError):
        r.lr = 1.0  # frozen
    m = MultilabelRecipe().resolved(folder_data=True, default_epochs=10, default_compose=100)
    assert (m.compose, m.n_val_patches, m.epochs) == (100, 20, 10)


def test_cli_refuses_an_unknown_option_in_one_line(tmp_path, capsys):
    from napari_sickle.cli.train import main

    code = main(["detector", "--data", "simulated", "--out", str(tmp_path / "o"), "-o", "crop=64"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: unknown detector training option(s) crop; valid: ") and "crop_size" in err
    assert not (tmp_path / "o").exists()


def test_class_name_options_given_as_text_are_lists_of_names():
    from napari_sickle.training.recipes import BMRecipe, DetectorRecipe, parse_option

    assert BMRecipe.from_options(dict([parse_option("class_names=neutrophil, lymphocyte")])).class_names == (
        "neutrophil",
        "lymphocyte",
    )
    assert DetectorRecipe.from_options(dict([parse_option("classes=RBC")])).classes == ("RBC",)
    assert DetectorRecipe.from_options(dict([parse_option("classes=['RBC', 'WBC']")])).classes == ["RBC", "WBC"]


def test_protocol_refuses_an_unknown_option_in_one_line(tmp_path, capsys):
    """multilabel-protocol has no recipe class; its -o keys are run_protocol's keywords."""
    import imageio.v3 as iio

    from napari_sickle.cli.train import main

    crops = tmp_path / "crops"
    for folder in ("Discocytes", "Elongated"):
        (crops / folder).mkdir(parents=True)
        for i in range(2):
            iio.imwrite(crops / folder / f"P{i}_{i}.png", np.full((24, 24), 90 + 40 * i, np.uint8))
    out = tmp_path / "p"
    code = main(["multilabel-protocol", "--data", str(crops), "--out", str(out), "-o", "n_train_patch=6"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: unknown multilabel-protocol option(s) n_train_patch; valid: ")
    assert "n_train_patches" in err and not out.exists()


def test_checkpoint_config_records_the_recipe(tmp_path):
    from napari_sickle.models.checkpoint import load_checkpoint
    from napari_sickle.training.recipes import UNetRecipe
    from napari_sickle.training.unet import train_unet

    recipe = UNetRecipe(n_simulated=2, simulated_shape=(96, 96), steps_per_epoch=1, batch_size=1, crop=32)
    res = train_unet("simulated", tmp_path, recipe, epochs=1, device="cpu", base_channels=4, depth=2, scale=0.5)
    cfg = load_checkpoint(res["checkpoint"], kind="unet")["config"]
    assert cfg["recipe"] == recipe.replace(epochs=1, base_channels=4, depth=2, scale=0.5).asdict()
    assert UNetRecipe.from_options(cfg["recipe"]).base_channels == 4
