"""Throughput and memory of the streaming batch analysis against the widget's one-by-one path.

    python benchmarks/bench_batch_analyze.py [--n 200] [--folder runs/bench_smears] [--processes P]
        [--threads T] [--one-by-one-threads T1] [--workers W] [--images-per-batch 4] [--batch-size 64]
        [--one-by-one 20] [--detect-images K] [--overlay] [--detector D.pt --classifier C.pt] [--prepare-only]

1. Writes ``--n`` 1920x1080 smear PNGs into ``--folder`` (reusing the files already there):
   ``--n / 4`` simulated smears (seeds 10000..), each in 4 orientations (see :func:`prepare`).
2. Streams them through ``napari_sickle.analysis.batch.analyze_batch`` (what
   ``python -m napari_sickle.analyze`` runs, with its defaults unless options are given: one
   analysing process per core, one torch thread each) into a fresh output folder, sampling the
   peak resident memory (VmHWM) of this process and of each child process (the analysing
   processes, or with one process the DataLoader readers) after 20, every 50 and ``--n`` images.
3. In the same process, analyses the first ``--one-by-one`` images one at a time with the
   analysis widget's code path: read the file, ``widgets.analyze._run_analysis`` (the function
   the widget's worker runs: cached models + ``analyze_smear``), export its regions CSV, with
   torch's default number of threads (all cores, as in napari's process).

Prints one JSON object: smears/min of both paths (``stream.smears_per_min`` for the batched
path, ``one_by_one.smears_per_min`` for the per-image calls), the speed-up (on the same first
images and over the whole run), peak memory at 20 and ``--n`` images, and the load average at
the start and the end. ``--detect-images``: smears per detector call (default: the batch
analysis' default, one on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def _status_kb(pid="self", key="VmHWM") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children_kb(key="VmRSS") -> dict[int, int]:
    """pid -> ``key`` of each child process of this one (analysing processes, or DataLoader readers)."""
    me = os.getpid()
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            out[int(d.name)] = _status_kb(d.name, key)
    return out


#: image k is simulated smear seed 10000 + k // VARIANTS seen in orientation k % VARIANTS
VARIANTS = 4


def _orient(img, v: int):
    return [img, img[:, ::-1], img[::-1], img[::-1, ::-1]][v]


def prepare(folder: Path, n: int, shape=(1080, 1920), variants: int = VARIANTS) -> float:
    """``n`` smear PNGs: ``ceil(n / variants)`` simulated smears, each saved as is, mirrored
    left-right, upside down and rotated 180 degrees (``variants=1``: every image its own
    simulation; 4 keeps the preparation short on a shared CPU: about 4 s per simulation)."""
    import imageio.v3 as iio
    import numpy as np

    from napari_sickle.data.simulate import simulate_smear

    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for k in range(n):
        p = folder / f"smear{k:04d}.png"
        if p.is_file():
            continue
        base = simulate_smear(seed=10000 + k // variants, shape=shape).image
        for v in range(k % variants, variants):
            kk = (k // variants) * variants + v
            q = folder / f"smear{kk:04d}.png"
            if kk < n and not q.is_file():
                tmp = q.with_suffix(".tmp.png")
                iio.imwrite(tmp, np.ascontiguousarray(_orient(base, v)), compress_level=1)
                os.replace(tmp, q)
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--folder", default="runs/bench_smears")
    ap.add_argument("--out", default="runs/bench_batch_out")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of each analysing process (default: analyze's default, cores / processes)",
    )
    ap.add_argument("--processes", type=int, default=None, help="analysing processes (default: analyze's default)")
    ap.add_argument(
        "--one-by-one-threads",
        type=int,
        default=None,
        help="torch threads of the one-by-one path (default: torch's default, as in the widget)",
    )
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--images-per-batch", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--one-by-one", type=int, default=20)
    ap.add_argument("--detect-images", type=int, default=None, help="smears per detector call")
    ap.add_argument("--overlay", action="store_true", help="also write overlay PNGs in the streaming run")
    ap.add_argument("--model", default=None, help="shipped RBC model name (default: the shipped default)")
    ap.add_argument("--detector", default=None)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prepare-only", action="store_true")
    args = ap.parse_args(argv)
    load_start = os.getloadavg()

    import torch

    widget_threads = args.one_by_one_threads or torch.get_num_threads()  # what napari's process uses
    folder = Path(args.folder)
    sim_s = prepare(folder, args.n)
    if args.prepare_only:
        print(json.dumps({"prepared": args.n, "seconds": round(sim_s, 1)}))
        return 0
    files = [folder / f"smear{k:04d}.png" for k in range(args.n)]

    from napari_sickle.analysis.batch import analyze_batch, default_num_workers, default_processes, list_inputs
    from napari_sickle.io.formats import write_regions_csv
    from napari_sickle.io.images import read_image
    from napari_sickle.models.registry import load_models
    from napari_sickle.widgets.analyze import _run_analysis

    models = load_models(args.detector, args.classifier, device=args.device, model=args.model)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    marks: dict[int, dict] = {}
    child_peaks: dict[int, int] = {}
    t0 = time.perf_counter()
    cpu0 = time.process_time()

    def on_done(index, name):
        k = len(marks) + 1
        child_peaks.update({pid: max(kb, child_peaks.get(pid, 0)) for pid, kb in _children_kb("VmHWM").items()})
        if k in (20, args.n) or k % 50 == 0:  # peaks so far (a process that has ended keeps its last peak)
            marks[k] = {
                "seconds": time.perf_counter() - t0,
                "peak_rss_mb": _status_kb() / 1024,
                "rss_mb": _status_kb(key="VmRSS") / 1024,
                "children_rss_mb": round(sum(_children_kb().values()) / 1024, 1),
                "children_peak_rss_mb_sum": round(sum(child_peaks.values()) / 1024, 1),
                "children_peak_rss_mb_max": round(max(child_peaks.values(), default=0) / 1024, 1),
            }
        else:
            marks[k] = None

    n_groups = -(-args.n // args.images_per_batch)
    procs = default_processes(args.device, n_groups) if args.processes is None else args.processes
    workers = args.workers if args.workers is not None else (default_num_workers() if procs == 1 else 0)
    if procs == 1 and args.threads:
        torch.set_num_threads(args.threads)
    rep = analyze_batch(
        list_inputs([str(f) for f in files]),
        out,
        models,
        device=args.device,
        batch_size=args.batch_size,
        images_per_batch=args.images_per_batch,
        detect_images=args.detect_images,
        num_workers=workers,
        processes=procs,
        threads=args.threads,
        overlay=args.overlay,
        on_image_done=on_done,
    )
    stream_s = time.perf_counter() - t0
    stream_cpu = time.process_time() - cpu0
    m = {k: v for k, v in marks.items() if v}

    # the widget's code path, one image at a time, same process, same models object
    k1 = min(args.one_by_one, args.n)
    one_out = Path(str(out) + "_one_by_one")
    shutil.rmtree(one_out, ignore_errors=True)
    one_out.mkdir(parents=True)
    cache = {(args.model, args.detector, args.classifier, args.device): models}
    torch.set_num_threads(widget_threads)
    t1 = time.perf_counter()
    cpu1 = time.process_time()
    for f in files[:k1]:
        img = read_image(f)
        res = _run_analysis(img, args.model, args.detector, args.classifier, args.device, 0.5, 0.5, 64, f.stem, cache)
        write_regions_csv(res.to_dataframe(f.name), one_out / f"{f.stem}_regions.csv")
    one_s = time.perf_counter() - t1
    one_cpu = time.process_time() - cpu1

    first = m.get(20, {}).get("seconds")
    result = {
        "n_images": args.n,
        "processes": rep.processes,
        "threads_per_process": args.threads,
        "one_by_one_threads": widget_threads,
        "workers": workers,
        "images_per_batch": args.images_per_batch,
        "detect_images": args.detect_images,
        "batch_size": args.batch_size,
        "overlay": args.overlay,
        "device": args.device,
        "detector": models.detector_path,
        "classifier": models.classifier_path,
        "simulate_seconds": round(sim_s, 1),
        "stream": {
            "seconds": round(stream_s, 1),
            "main_cpu_seconds": round(stream_cpu, 1),
            "smears_per_min": round(60 * rep.analyzed / stream_s, 2),
            "regions": rep.regions,
            "unreadable": rep.unreadable,
        },
        "memory": {str(k): {kk: round(vv, 1) for kk, vv in v.items()} for k, v in sorted(m.items())},
        "one_by_one": {
            "images": k1,
            "seconds": round(one_s, 1),
            "main_cpu_seconds": round(one_cpu, 1),
            "smears_per_min": round(60 * k1 / one_s, 2),
        },
        "speedup_same_first_images": round(one_s / first, 2) if first and k1 == 20 else None,
        "speedup_throughput": round((rep.analyzed / stream_s) / (k1 / one_s), 2),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
