import sys, pickle, numpy as np, torch
torch.set_num_threads(1)
from napari_sickle.models.detector import RegionDetector, TTA_VIEWS, _view, _unview_boxes
model, out, key = sys.argv[1], sys.argv[2], sys.argv[3]
scales = [float(x) for x in sys.argv[4].split(',')]
from _bccd import bccd_splits
items, names, _idx = bccd_splits()
idx = _idx[key]
det = RegionDetector.from_checkpoint(model)
per = []
for i in idx:
    im = torch.as_tensor(items[i]['image']).permute(2,0,1).float()/255; h,w = im.shape[-2:]
    v = {}
    for sc in scales:
        det.config['scale'] = sc
        for view in TTA_VIEWS['flips']:
            b,s,l = det.detect_tensors([_view(im, view)], 0.01, 0.5, tta='none')[0]
            v[(sc,)+view] = (_unview_boxes(b, view, h, w), s, l)
    per.append(v)
pickle.dump(dict(per=per, gts=[items[i]['boxes'] for i in idx]), open(out,'wb'))
