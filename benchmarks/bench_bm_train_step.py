"""Time one SGD training step of the BM classifier on the CPU, per input size and memory format.

    .venv/bin/python benchmarks/bench_bm_train_step.py --sizes 96 128 --threads 1 --repeats 3

Prints, per (size, memory format), the wall time of each step of a batch of 32 random
cells and the process CPU time of those steps. Random inputs: the cost does not depend on
the pixels. ImageNet efficientnet-lite0 (offline weights), 4-class head.
"""

import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from napari_sickle.models.bm import build_bm_model

    net = build_bm_model(a.arch, ["a", "b", "c", "d"]).module
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()
    for size in a.sizes:
        x = torch.randn(a.batch_size, 3, size, size)
        y = torch.randint(0, 4, (a.batch_size,))
        for fmt in ("contiguous", "channels_last"):
            mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
            net = net.to(memory_format=mf)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()  # warm-up step, not timed
            walls, c0 = [], time.process_time()
            for _ in range(a.repeats):
                t = time.perf_counter()
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
                walls.append(round(time.perf_counter() - t, 3))
            print(
                json.dumps(
                    {
                        "size": size,
                        "format": fmt,
                        "batch": a.batch_size,
                        "threads": a.threads,
                        "step_wall_s": walls,
                        "cpu_s_per_step": round((time.process_time() - c0) / a.repeats, 3),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
