import sys, numpy as np, torch
torch.set_num_threads(1)
from napari_sickle.training.detector import predict_items, ap50
from napari_sickle.models.detector import RegionDetector
model, key, mode = sys.argv[1], sys.argv[2], sys.argv[3]
from _bccd import bccd_splits
items, names, _idx = bccd_splits()
idx = _idx[key]
det = RegionDetector.from_checkpoint(model)
its = [items[i] for i in idx]
p = predict_items(det, its, tta=mode)
print(key, mode, ap50(p, [(it['boxes'], it['labels']) for it in its], names)['ap50'])
