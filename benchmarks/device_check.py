"""Device check of the RBC analysis: per-stage times, batch throughput, peak GPU memory and
CPU-vs-device agreement, in one run (no napari needed; the script fails if napari gets imported).

    bash benchmarks/device_check.sh                       # GPU machine: cuda, 200 smears
    PYTHONPATH=src python benchmarks/device_check.py --device cpu --smears 8 --repeats 2 \
        --accurate-regions 12 --out /tmp/device_check      # the same on the CPU, small counts

1. Writes ``--smears`` 1920x1080 PNG smears to ``OUT/smears`` (simulated, seeds 50000...; each
   seed saved as is and mirrored three ways, as benchmarks/bench_batch_analyze.py does, to keep
   the preparation short), reused when present.
2. Per-stage table: ``analyze_smear`` on the first smear with the shipped default (``--model``),
   median of ``--repeats`` after a warm-up, the device synchronised around each call; the same
   regions classified with the batched device crop path (models/crops.py) and the per-region
   host path, and with the accurate recipe (cell split, 8 views, 160 px, avgmax-s4;
   ``models.multilabel.new_classifier`` with untrained heads, for time only) on at most
   ``--accurate-regions`` regions.
3. Throughput: ``python -m napari_sickle.analyze OUT/smears --out OUT/analyze --device D
   --overwrite`` as a subprocess (its defaults otherwise), wall time including start-up and
   model loading, in smears/min; peak GPU memory of that process from ``nvidia-smi`` when present.
4. Peak GPU memory of step 2 (``torch.cuda.max_memory_allocated``).
5. Agreement: the first smear analysed with the models on the CPU and on ``--device``: the
   same regions (boxes matched at IoU >= 0.9) and probabilities within ``--prob-tol``.
6. Cell split: the regions of step 2 split into cells with the host split (scikit-image, on
   ``models.crops.split_workers`` threads) and with the batched torch split on ``--device``
   (``models.cells_torch``), and the host part of the crop path (``models.crops.cell_cuts``)
   with each; seconds (median of at most 3 after a warm-up) and agreement of the torch labels
   with the host labels (benchmarks/bench_cell_split.py, ``compare_split``).
7. With ``--profile``: ``torch.profiler`` over one ``analyze_smear`` call (CPU and CUDA
   activities): the top operators by self time, the number of operator calls and CUDA kernel
   launches, and the time inside torch operators against the wall time (the rest is Python,
   NumPy and scikit-image outside PyTorch).

Prints a table and writes ``OUT/device_check.json`` (``--out``; also ``$OUT/device_check.json``
when the variable is set). Exit status 1 when the agreement check
fails or napari was imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REQUIRED = ("numpy", "scipy", "pandas", "skimage", "sklearn", "imageio", "torch", "torchvision", "timm", "skops")


def _missing() -> list[str]:
    import importlib.util

    return [m for m in REQUIRED if importlib.util.find_spec(m) is None]


def _write_smear(args):
    seed, folder = args
    names = [f"smear_{seed}_{k}.png" for k in ("id", "lr", "ud", "rot")]
    if all((Path(folder) / n).exists() for n in names):
        return names
    import imageio.v3 as iio

    from napari_sickle.data.simulate import simulate_smear

    img = simulate_smear(seed=seed).image
    for n, a in zip(names, (img, img[:, ::-1], img[::-1], img[::-1, ::-1])):
        tmp = Path(folder) / (n + ".tmp.png")
        iio.imwrite(tmp, np.ascontiguousarray(a), compress_level=1)
        os.replace(tmp, Path(folder) / n)
    return names


def make_smears(folder: Path, n: int, procs: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    seeds = [50000 + i for i in range((n + 3) // 4)]
    jobs = [(s, str(folder)) for s in seeds]
    if procs > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(procs, len(jobs))) as pool:
            names = pool.map(_write_smear, jobs)
    else:
        names = [_write_smear(j) for j in jobs]
    paths = [folder / x for ns in names for x in ns][:n]
    for extra in sorted(folder.glob("*.png")):  # a previous run with more smears
        if extra not in paths:
            extra.unlink()
    return paths


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(dev, fn):
    _sync(dev)
    t = time.perf_counter()
    out = fn()
    _sync(dev)
    return out, time.perf_counter() - t


def iou_matrix(a, b):
    """Pairwise IoU of (N, 4) and (M, 4) x_min, y_min, x_max, y_max boxes (torchvision's box_iou)."""
    import torch
    from torchvision.ops import box_iou

    a = torch.as_tensor(np.asarray(a, float).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(b, float).reshape(-1, 4))
    return box_iou(a, b).numpy()


class GpuMemoryPoll:
    """Largest ``nvidia-smi`` memory.used (MiB) of the first GPU while running."""

    def __init__(self, period: float = 0.2):
        self.period, self.peak, self.base = period, None, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            return float(out.stdout.split()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _run(self):
        while not self._stop.is_set():
            v = self._read()
            if v is not None:
                self.peak = v if self.peak is None else max(self.peak, v)
            self._stop.wait(self.period)

    def __enter__(self):
        self.base = self._read()
        if self.base is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def stage_table(models, image, dev, repeats: int) -> dict:
    from napari_sickle.analysis.smear import analyze_smear

    for _ in range(2):  # warm-up (cuDNN autotuning, lazy module loading, allocator)
        analyze_smear(image, models)
    runs = []
    res = None
    for _ in range(repeats):
        res, dt = _timed(dev, lambda: analyze_smear(image, models))
        runs.append({**res.timings, "wall": dt})
    keys = list(runs[0])
    return {
        "n_regions": len(res),
        "median_s": {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys},
        "runs": runs,
        "result": res,
    }


def classify_paths(clf, image, boxes, dev, repeats: int) -> dict:
    """The same regions classified with the batched device crop path and the per-region path."""
    out, probs = {}, {}
    for path in ("batched", "per-region"):
        clf.crop_path = path
        clf.predict_boxes(image, boxes)  # warm-up
        ts = []
        for _ in range(repeats):
            p, dt = _timed(dev, lambda: clf.predict_boxes(image, boxes))
            ts.append(dt)
        crops, dcrop = _timed(dev, lambda: clf.region_crops(image, boxes))
        out[path] = {"classify_s": statistics.median(ts), "crops_s": dcrop, "inputs": int(len(crops[0]))}
        probs[path] = p
    clf.crop_path = "batched"
    out["max_abs_prob_diff"] = float(np.abs(probs["batched"] - probs["per-region"]).max()) if len(boxes) else 0.0
    return out


def cell_split(image, boxes, dev, repeats: int) -> dict:
    """Host against batched torch cell split of the regions (benchmarks/bench_cell_split.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_cell_split import compare_split

    return compare_split(image, boxes, dev, repeats)


def throughput(folder: Path, out: Path, device: str, n: int, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "napari_sickle.analyze",
        str(folder),
        "--out",
        str(out),
        "--device",
        device,
        "--overwrite",
        *extra,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    with GpuMemoryPoll() as poll:
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
    done = len(list(out.glob("*_regions.csv")))
    res = {
        "command": " ".join(cmd[1:]),
        "returncode": proc.returncode,
        "smears": n,
        "smears_done": done,
        "wall_s": wall,
        "smears_per_min": 60.0 * done / wall if wall > 0 else None,
        "stderr_tail": proc.stderr[-800:],
    }
    if poll.peak is not None:
        res["nvidia_smi_peak_mib"] = poll.peak
        res["nvidia_smi_base_mib"] = poll.base
    return res


def agreement(model, device_models, image, tol: float) -> dict:
    from napari_sickle.analysis.smear import analyze_smear
    from napari_sickle.models.registry import load_models

    cpu_models = load_models(None, None, device="cpu", model=model)
    a = analyze_smear(image, cpu_models)
    b = analyze_smear(image, device_models)
    iou = iou_matrix(a.boxes, b.boxes)
    matched = iou.max(axis=1) >= 0.9 if len(b) else np.zeros(len(a), bool)
    j = iou.argmax(axis=1) if len(b) else np.zeros(len(a), int)
    diff = float(np.abs(a.probs[matched] - b.probs[j[matched]]).max()) if matched.any() else 0.0
    ok = len(a) == len(b) and bool(matched.all()) and diff <= tol
    return {
        "cpu_regions": len(a),
        "device_regions": len(b),
        "matched_iou90": int(matched.sum()),
        "max_abs_prob_diff": diff,
        "tolerance": tol,
        "ok": ok,
    }


def profile(models, image, dev, top: int = 15) -> dict:
    """torch.profiler over one ``analyze_smear`` call (after the warm-up of the stage table)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from napari_sickle.analysis.smear import analyze_smear

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with tprofile(activities=acts) as prof:
        _, wall = _timed(dev, lambda: analyze_smear(image, models))
    ev = prof.key_averages()
    cuda = dev.type == "cuda"
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(ev, key=lambda e: getattr(e, key, 0) or 0, reverse=True)[:top]
    kernels = [
        e for e in prof.events() if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA")
    ]
    top_level = [e for e in prof.events() if e.cpu_parent is None and str(e.device_type).endswith("CPU")]
    return {
        "wall_s": wall,
        "torch_ops_cpu_s": sum(e.cpu_time_total for e in top_level) / 1e6,  # top-level torch operators
        "gpu_kernel_s": sum(e.self_device_time_total for e in ev) / 1e6 if cuda else None,
        "operator_calls": int(sum(e.count for e in ev)),
        "cuda_kernel_launches": len(kernels) if cuda else None,
        "table": prof.key_averages().table(sort_by=key, row_limit=top),
        "top": [
            {
                "name": e.key,
                "calls": e.count,
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "self_gpu_ms": (e.self_device_time_total / 1e3) if cuda else None,
            }
            for e in rows
        ],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cuda / cpu / auto (default: cuda when available)")
    ap.add_argument("--smears", type=int, default=200, help="PNG smears for the throughput run (default 200)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default=None, help="shipped RBC model (default: the shipped default)")
    ap.add_argument(
        "--accurate-regions",
        type=int,
        default=200,
        help="regions classified with the accurate recipe (0: skip; default 200)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads of this process")
    ap.add_argument("--prob-tol", type=float, default=1e-2)
    ap.add_argument(
        "--out",
        default="runs/device_check",
        help="work folder (smears, analyze output, JSON); the JSON is also copied to $OUT when set",
    )
    ap.add_argument("--analyze-args", default="", help="extra arguments for the analyze command, one string")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of one analyze_smear call")
    args = ap.parse_args(argv)

    missing = _missing()
    if missing:
        print(f"device_check: missing Python packages: {', '.join(missing)}", file=sys.stderr)
        return 3
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_sickle._device import resolve_device
    from napari_sickle.models.registry import load_models

    dev = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": str(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
    }
    t0 = time.perf_counter()

    t = time.perf_counter()
    paths = make_smears(out / "smears", args.smears, procs=min(16, os.cpu_count() or 1))
    report["prepare_s"] = time.perf_counter() - t
    import imageio.v3 as iio

    image = np.asarray(iio.imread(paths[0]))[..., :3]

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    models, report["model_load_s"] = _timed(dev, lambda: load_models(None, None, device=str(dev), model=args.model))
    report["model"] = {
        "detector": str(models.detector_path),
        "classifier": str(models.classifier_path),
        "classifier_config": {
            k: models.classifier.config.get(k) for k in ("input_size", "crop", "tta", "split", "pool")
        },
    }
    st = stage_table(models, image, dev, args.repeats)
    res = st.pop("result")
    report["stages"] = st
    report["classify_paths_default"] = classify_paths(models.classifier, image, res.boxes, dev, args.repeats)
    if args.accurate_regions > 0 and len(res):
        from napari_sickle.models.multilabel import new_classifier

        try:
            acc = new_classifier(pretrained=True, device=dev)
        except Exception:  # noqa: BLE001 - ImageNet weights not installed: time matters here, not accuracy
            acc = new_classifier(pretrained=False, device=dev)
        boxes = res.boxes[: args.accurate_regions]
        report["classify_paths_accurate"] = {
            "regions": int(len(boxes)),
            **classify_paths(acc, image, boxes, dev, max(1, min(3, args.repeats))),
        }
        del acc
    if len(res):
        report["cell_split"] = cell_split(image, res.boxes, dev, max(1, min(3, args.repeats)))
    if dev.type == "cuda":
        report["peak_gpu_memory_mib_stages"] = torch.cuda.max_memory_allocated(dev) / 2**20

    if args.profile:
        report["profile"] = profile(models, image, dev)
    # on a CPU-only machine this compares two CPU runs (the check itself is exercised)
    report["agreement"] = agreement(args.model, models, image, args.prob_tol)
    del models
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    if not args.skip_throughput:
        report["throughput"] = throughput(
            out / "smears",
            out / "analyze",
            args.device if args.device != "auto" else dev.type,
            len(paths),
            args.analyze_args.split(),
        )
    report["napari_imported"] = "napari" in sys.modules
    report["total_s"] = time.perf_counter() - t0
    (out / "device_check.json").write_text(json.dumps(report, indent=1, default=float))
    if os.environ.get("OUT"):  # only the small report, not the smears, goes to $OUT
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "device_check.json").write_text(json.dumps(report, indent=1, default=float))
    print_table(report)
    ok = report["agreement"]["ok"] and not report["napari_imported"]
    if "throughput" in report and report["throughput"]["returncode"] != 0:
        ok = False
    print(f"\nRESULT: {'PASS' if ok else 'FAIL'} (json: {out / 'device_check.json'})")
    return 0 if ok else 1


def print_table(r: dict) -> None:
    print(
        f"device {r['device']} ({r.get('gpu') or 'CPU'}), torch {r['torch']}, {r['threads']} CPU threads; "
        f"smears prepared in {r['prepare_s']:.1f} s, models loaded in {r['model_load_s']:.2f} s"
    )
    s = r["stages"]
    print(f"\nper-stage seconds, one 1920x1080 smear, {s['n_regions']} regions, median of {len(s['runs'])}:")
    print("| stage | seconds |\n|---|---|")
    for k, v in s["median_s"].items():
        print(f"| {k} | {v:.4f} |")
    for key, title in (("classify_paths_default", "shipped default"), ("classify_paths_accurate", "accurate recipe")):
        c = r.get(key)
        if not c:
            continue
        print(f"\nclassification, {title}{' (' + str(c['regions']) + ' regions)' if 'regions' in c else ''}:")
        print("| crop path | classify s | crops s | inputs |\n|---|---|---|---|")
        for p in ("batched", "per-region"):
            print(f"| {p} | {c[p]['classify_s']:.4f} | {c[p]['crops_s']:.4f} | {c[p]['inputs']} |")
        print(f"max |p_batched - p_per_region| = {c['max_abs_prob_diff']:.2e}")
    c = r.get("cell_split")
    if c:
        print(
            f"\ncell split of the {c['regions']} regions (median of at most 3):\n"
            "| split | split s | cell_cuts s | cells |\n|---|---|---|---|\n"
            f"| host (scikit-image, {c['host_threads']} threads) | {c['host_s']:.4f} | {c['cuts_host_s']:.4f} "
            f"| {c['host_cells']} |\n"
            f"| torch ({r['device']}) | {c['torch_s']:.4f} | {c['cuts_torch_s']:.4f} | {c['torch_cells']} |"
        )
        print(f"torch split: {c['batches']} padded batches, {c['torch_ops']} torch operator calls")
        print(
            f"torch vs host: same cell count in {c['same_count']:.1%} of the regions, identical labels in "
            f"{c['identical']:.1%}, matched IoU mean {c['mean_matched_iou']} (5th percentile {c['p5_matched_iou']})"
        )
    if "peak_gpu_memory_mib_stages" in r:
        print(f"\npeak GPU memory (torch.cuda.max_memory_allocated, stages): {r['peak_gpu_memory_mib_stages']:.0f} MiB")
    t = r.get("throughput")
    if t:
        print(
            f"\nthroughput: {t['smears_done']}/{t['smears']} smears in {t['wall_s']:.1f} s = "
            f"{t['smears_per_min']:.0f} smears/min (python {t['command']}; rc {t['returncode']})"
        )
        if "nvidia_smi_peak_mib" in t:
            print(
                f"peak GPU memory used during it (nvidia-smi): {t['nvidia_smi_peak_mib']:.0f} MiB "
                f"(before: {t['nvidia_smi_base_mib']:.0f} MiB)"
            )
        if t["returncode"] != 0:
            print(t["stderr_tail"])
    a = r["agreement"]
    p = r.get("profile")
    if p:
        print(
            f"\ntorch.profiler, one analyze_smear: wall {p['wall_s']:.3f} s, top-level torch operators "
            f"{p['torch_ops_cpu_s']:.3f} s of host time, {p['operator_calls']} operator calls"
            + (
                f", GPU kernels {p['gpu_kernel_s']:.4f} s in {p['cuda_kernel_launches']} launches"
                if p["gpu_kernel_s"] is not None
                else ""
            )
        )
        print(p["table"])
    print(
        f"\nCPU vs {r['device']}: regions {a['cpu_regions']} vs {a['device_regions']}, matched {a['matched_iou90']}, "
        f"max |dp| {a['max_abs_prob_diff']:.2e} (tolerance {a['tolerance']}): {'OK' if a['ok'] else 'MISMATCH'}"
    )
    print(f"napari imported: {'YES' if r['napari_imported'] else 'no'}; total {r['total_s']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
