import sys, pickle, numpy as np, torch
torch.set_num_threads(1)
from napari_sickle.models.detector import RegionDetector
model, out = sys.argv[1], sys.argv[2]
keys = sys.argv[3].split(',') if len(sys.argv)>3 else ['valtr','test']
from _bccd import bccd_splits
items, names, _idx = bccd_splits()
det = RegionDetector.from_checkpoint(model)
res = {}
for key, idx in _idx.items():
    if key not in keys: continue
    its = [items[i] for i in idx]
    per = []
    for it in its:
        im = it['image']; h, w = im.shape[:2]; v = {}
        for name, (fx, fy) in {'id':(0,0),'h':(1,0),'v':(0,1),'hv':(1,1)}.items():
            x = im[:, ::-1] if fx else im
            x = x[::-1] if fy else x
            b, s, l = det.detect(np.ascontiguousarray(x), score_threshold=0.01, nms_iou=0.5)
            b = b.copy()
            if fx: b[:, [0, 2]] = w - b[:, [2, 0]]
            if fy: b[:, [1, 3]] = h - b[:, [3, 1]]
            v[name] = (b, s)
        per.append(v)
    res[key] = dict(per=per, gts=[it['boxes'] for it in its])
    print(key, 'done', flush=True)
pickle.dump(res, open(out,'wb'))
