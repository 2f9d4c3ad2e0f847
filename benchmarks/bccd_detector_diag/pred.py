import sys, pickle, numpy as np, torch
torch.set_num_threads(1)
from napari_sickle.training.detector import predict_items, ap50
from napari_sickle.models.detector import RegionDetector
model, out = sys.argv[1], sys.argv[2]
from _bccd import bccd_splits
items, names, _idx = bccd_splits()
det = RegionDetector.from_checkpoint(model)
res = {}
for key, idx in _idx.items():
    its = [items[i] for i in idx]
    p = predict_items(det, its, score_threshold=0.01)
    res[key] = dict(preds=p, gts=[it['boxes'] for it in its], names=[it['name'] for it in its])
    m = ap50([(b[s>=0.05],s[s>=0.05],l[s>=0.05]) for b,s,l in p], [(it['boxes'], it['labels']) for it in its], names)
    print(key, len(its), m['ap50'])
pickle.dump(res, open(out,'wb'))
