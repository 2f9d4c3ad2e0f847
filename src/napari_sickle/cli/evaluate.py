"""Evaluate a trained model and print one JSON object.

    python -m napari_sickle.evaluate multilabel   --model best.pt --data D [--device auto]
    python -m napari_sickle.evaluate detector     --model best.pt --data D
    python -m napari_sickle.evaluate bm           --model best.pt --data D
    python -m napari_sickle.evaluate segmentation [--model unet.pt] --data D

Dispatches to ``evaluate_<kind>`` in ``napari_sickle.training.<kind>`` (segmentation:
``napari_sickle.analysis.segmentation.evaluate_segmentation``). Output keys:

* multilabel: ``auc`` (per type), ``mean_auc``, ``exact_match_accuracy``, ``abnormal_accuracy``, ``n``
* detector: ``ap50``, ``ap50_per_class``, ``n_images``
* bm: ``macro_f1``, ``macro_precision``, ``macro_recall``, ``accuracy``, ``per_class``, ``n``
* segmentation: per method (``watershed``, ``unet``, ...) ``dice``, ``iou``, ``instance_f1_50``, ``count_error``

Bad input or environment problems (missing model file, wrong model kind, unreadable data,
full disk) end with exit code 2 and a one-line message on stderr (``--debug``: the traceback
too); Ctrl-C ends with one line and exit code 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Callable

from .._malloc import tune_malloc
from ..constants import DEVICES
from ._common import (
    UsageError,
    add_option_argument,
    check_data,
    debug_requested,
    one_line,
    to_json,
    user_error_types,
)

KINDS = ("detector", "multilabel", "bm", "segmentation")

#: kind -> (module, function) of its evaluator
EVALUATORS = {
    "multilabel": ("napari_sickle.training.multilabel", "evaluate_multilabel"),
    "detector": ("napari_sickle.training.detector", "evaluate_detector"),
    "bm": ("napari_sickle.training.bm", "evaluate_bm"),
    "segmentation": ("napari_sickle.analysis.segmentation", "evaluate_segmentation"),
}


def get_evaluator(kind: str) -> Callable[..., dict]:
    """The ``evaluate_<kind>`` function (:data:`EVALUATORS`)."""
    mod_name, func_name = EVALUATORS[kind]
    return getattr(importlib.import_module(mod_name), func_name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m napari_sickle.evaluate", description="Evaluate a napari-sickle model; prints one JSON object."
    )
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in KINDS:
        p = sub.add_parser(kind)
        p.add_argument(
            "--model",
            required=(kind != "segmentation"),
            help="checkpoint (best.pt)" + ("; optional U-Net for segmentation" if kind == "segmentation" else ""),
        )
        p.add_argument("--data", required=True, help="evaluation data: folder, CSV table, or 'simulated'")
        p.add_argument("--device", default="auto", choices=DEVICES)
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        add_option_argument(p, "extra evaluator option (repeatable)")
        p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_malloc()
    try:
        if args.model is not None and not Path(args.model).expanduser().is_file():
            raise UsageError(f"--model {args.model}: no such checkpoint file.")
        check_data(args.data, "eval")
        func = get_evaluator(args.kind)
        if args.threads:
            import torch

            torch.set_num_threads(int(args.threads))
        options = dict(args.options)
        t0 = time.perf_counter()
        if args.kind == "segmentation":
            result = func(args.data, unet_model=args.model, device=args.device, **options)
        else:
            result = func(args.model, args.data, device=args.device, **options)
        result = dict(result)
        result.setdefault("seconds", round(time.perf_counter() - t0, 3))
        print(to_json(result), flush=True)
        return 0
    except KeyboardInterrupt:
        print("error: stopped by the user", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # noqa: BLE001
        user = isinstance(exc, user_error_types()) or isinstance(exc, (ValueError, KeyError))
        msg = one_line(exc) if user else f"{type(exc).__name__}: {one_line(exc)}"
        print(f"error: {msg}", file=sys.stderr, flush=True)
        if debug_requested(args):
            import traceback

            traceback.print_exc()
        return 2 if user else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
