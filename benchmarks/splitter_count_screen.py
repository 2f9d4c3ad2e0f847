"""How often the learned cell splitter (split="unet") finds the number of cells of composed
patches, on fold ``--fold`` of the Table 1 protocol's folds (docs/results.md).

Trains the splitter on the fold's training crops (``train_splitter`` options as JSON; the
network is cached in ``--net``), then scores post-processing settings (JSON list of
``models.splitter`` settings) on the fold's 150 test patches (the protocol's seed) and the
fraction of the fold's single test crops it cuts; the rule-based split is scored too:

    python benchmarks/splitter_count_screen.py --data $SICKLE_DATA/sickle-rbc --net runs/split1000.pt \\
        '{"steps": 1000}' '[{}, {"seeds": "components", "seed_threshold": 0.5}]'
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--fold", type=int, default=1)
    ap.add_argument("--net", required=True, help="splitter weights: loaded if the file exists, else trained and saved")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("options", nargs="?", default="{}", help="train_splitter options (JSON)")
    ap.add_argument("settings", nargs="?", default="[{}]", help="list of splitter settings to score (JSON)")
    a = ap.parse_args(argv)

    import torch
    from sklearn.model_selection import StratifiedKFold

    from napari_sickle.data.compose import compose_patches
    from napari_sickle.models.cells import split_cells
    from napari_sickle.models.splitter import build_splitter, split_cells_learned
    from napari_sickle.training.protocol import _load_crops
    from napari_sickle.training.splitter import split_count_accuracy, train_splitter

    torch.set_num_threads(a.threads)
    k = a.fold
    crops = _load_crops(a.data)
    strata = np.array([c.type_index for c in crops])
    tr, te = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(np.zeros(len(crops)), strata))[k]
    try:
        net = build_splitter()
        net.load_state_dict(torch.load(a.net))
        net.eval()
    except FileNotFoundError:
        t0 = time.time()
        net, stats = train_splitter([crops[i] for i in tr], seed=k, **json.loads(a.options))
        torch.save(net.state_dict(), a.net)
        print(json.dumps({"trained": stats, "wall_s": round(time.time() - t0, 1)}), flush=True)
    tep = compose_patches([crops[i] for i in te], 150, seed=2 * k + 1, max_cells=4, min_cells=2)
    cells = np.array([p[2] for p in tep])
    found = np.array([max(1, int(split_cells(p[0]).max())) for p in tep])
    print(
        json.dumps(
            {
                "rule-based split": {
                    "exact": float(np.mean(found == cells)),
                    "merged": float(np.mean(found < cells)),
                    "cut": float(np.mean(found > cells)),
                },
                "single crops cut": float(np.mean([split_cells(crops[i].image).max() > 1 for i in te])),
            }
        )
    )
    for cfg in json.loads(a.settings):
        cut = float(np.mean([split_cells_learned(net, crops[i].image, cfg).max() > 1 for i in te]))
        print(json.dumps({"settings": cfg, **split_count_accuracy(net, tep, cfg), "single crops cut": cut}), flush=True)


if __name__ == "__main__":
    main()
