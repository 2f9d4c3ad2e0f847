"""Speed and memory of segmentation on a 1920x1080 smear on this CPU.

    .venv/bin/python benchmarks/bench_segmentation.py [--model best.pt] [--threads 2] [--repeats 3] [--tta d4 --methods unet]

The smear (simulate_smear seed 7) is made once; each method then runs in its own subprocess
so that its peak resident memory (ru_maxrss, which includes the ~imports of torch/skimage,
shown as rss_before_mb) is its own. Wall and CPU seconds are both reported: on a loaded
machine the wall time includes waiting for a core.
Without --model the U-Net timing uses randomly initialised weights of the default
architecture (time does not depend on the weights). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def _child(method: str, model: str | None, threads: int, repeats: int, image: str, tta: str | None = None) -> dict:
    import resource
    import time

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from napari_sickle.analysis.segmentation import segment_connected_components, segment_unet, segment_watershed

    img = np.load(image)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if method == "unet":
        if model:
            from napari_sickle.models.unet import load_unet

            net = load_unet(model)
        else:
            from napari_sickle.models.unet import DEFAULT_CONFIG, build_unet

            net = (build_unet(DEFAULT_CONFIG), dict(DEFAULT_CONFIG))

        def fn():
            return segment_unet(img, net, device="cpu", tta=tta)
    elif method == "watershed":

        def fn():
            return segment_watershed(img)
    else:

        def fn():
            return segment_connected_components(img)

    fn()  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        lab = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds_median": round(float(np.median(times)), 3),
        "seconds_all": [round(t, 3) for t in times],
        "cpu_seconds_median": round(float(np.median(cpu)), 3),
        "objects": int(lab.max()),
        "peak_rss_mb": round(peak, 1),
        "rss_before_mb": round(base, 1),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--tta", default=None, help="U-Net test-time augmentation (none, flips, d4; default: the checkpoint's)"
    )
    ap.add_argument("--methods", default="watershed,unet,connected_components")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--image", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.child, a.model, a.threads, a.repeats, a.image, a.tta)))
        return
    import tempfile

    import numpy as np

    from napari_sickle.data.simulate import simulate_smear

    image = str(Path(tempfile.mkdtemp()) / "smear.npy")
    np.save(image, simulate_smear(seed=7, shape=(1080, 1920)).image)
    out = {"image": "simulated smear 1920x1080 RGB", "threads": a.threads, "repeats": a.repeats}
    try:
        out["load_average_1min"] = round(__import__("os").getloadavg()[0], 2)
    except OSError:
        pass
    if a.tta:
        out["unet_tta"] = a.tta
    for m in a.methods.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            m,
            "--threads",
            str(a.threads),
            "--repeats",
            str(a.repeats),
            "--image",
            image,
        ]
        if a.model:
            cmd += ["--model", a.model]
        if a.tta:
            cmd += ["--tta", a.tta]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[m] = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
