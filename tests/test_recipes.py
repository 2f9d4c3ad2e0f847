"""Training recipes: tiny seeded runs of every trainer reproduce the recorded losses and
metrics (``benchmarks/recipe_baseline.py``)."""

import json
import sys
from pathlib import Path

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


@pytest.mark.parametrize("trainer", ["detector", "multilabel", "unet", "bm"])
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
