"""Oracle split on a fold's composed test patches (docs/results.md): each test
patch's cells are taken from the composer's true instance masks instead of the split, the
heads are refitted on the training features a fold screen saved, and the exact match is
printed beside that of the screen's own (split) test features:

    python benchmarks/multilabel_fold_screen.py --data $SICKLE_DATA/sickle-rbc --fold 1 --threads 1 \\
        --save runs/f1_flip4.npz '{"tta": "flip4"}'
    python benchmarks/multilabel_oracle_split.py runs/f1_flip4.npz flip4 1

Arguments: the saved .npz, the screen's tta, the fold (0-based). Reads $SICKLE_DATA
(default ../shared/data).
"""

import json
import os
import sys

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from napari_sickle.data.compose import compose_patches
from napari_sickle.models import multilabel as mlm
from napari_sickle.models.cells import cell_canvases
from napari_sickle.training.multilabel import Bags, multilabel_metrics
from napari_sickle.training.protocol import _fit, _load_crops, _probs

torch.set_num_threads(1)
npz, tta, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = np.load(npz)
crops = _load_crops(os.path.join(os.environ.get("SICKLE_DATA", "../shared/data"), "sickle-rbc"))
strata = np.array([c.type_index for c in crops])
tr, te = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(np.zeros(len(crops)), strata))[k]
tep = compose_patches([crops[i] for i in te], 150, seed=2 * k + 1, max_cells=4, min_cells=2, return_masks=True)
clf = mlm.new_classifier(tta=tta)
m = torch.tensor(mlm.IMAGENET_MEAN).view(3, 1, 1)
s = torch.tensor(mlm.IMAGENET_STD).view(3, 1, 1)
ts, own = [], []
for i, (img, y, n, inst) in enumerate(tep):
    h, w = img.shape[:2]
    for c in cell_canvases(img, (0, 0, w, h), mlm.CELL_MIN_SIDE, splitter=lambda r, inst=inst: inst):
        ts.append(mlm.canvas_tensor(c, mlm.CELL_INPUT_SIZE, m, s))
        own.append(i)
X = clf.features(torch.stack(ts)).numpy()
Xte = Bags(X, np.array(own), len(tep))
ytep = np.array([p[1] for p in tep])
assert (ytep == d["multi_y"]).all()
tra = Bags(d["train_X"].astype(np.float32), d["train_owner"], int(d["train_owner"].max()) + 1)
heads = _fit(tra.dim, tra, d["train_y"], epochs=40, lr=1e-3, batch_size=256, seed=k)
pr = _probs(heads, Xte)
print(
    json.dumps(
        {
            "oracle_multi": multilabel_metrics(ytep, pr)["exact_match_accuracy"],
            "screen_multi_refit": multilabel_metrics(
                d["multi_y"], _probs(heads, Bags(d["multi_X"].astype(np.float32), d["multi_owner"], len(tep)))
            )["exact_match_accuracy"],
        }
    )
)
