import sys, pickle, numpy as np, torch
torch.set_num_threads(1)
from napari_sickle.training.detector import load_detection_data, _split_items, predict_items, ap50
from napari_sickle.models.detector import RegionDetector
model, out = sys.argv[1], sys.argv[2]
items, names, splits = load_detection_data(__import__('os').path.join(__import__('os').environ.get('SICKLE_DATA', '../shared/data'), 'bccd'), classes=['RBC'])
tr, va = _split_items(items, splits, 0.15, 0, 'train')
test = [i for i,s in enumerate(splits) if s=='val']
det = RegionDetector.from_checkpoint(model)
res = {}
for key, idx in (('valtr', va), ('test', test)):
    its = [items[i] for i in idx]
    p = predict_items(det, its, score_threshold=0.01)
    res[key] = dict(preds=p, gts=[it['boxes'] for it in its], names=[it['name'] for it in its])
    m = ap50([(b[s>=0.05],s[s>=0.05],l[s>=0.05]) for b,s,l in p], [(it['boxes'], it['labels']) for it in its], names)
    print(key, len(its), m['ap50'])
pickle.dump(res, open(out,'wb'))
