import sys, numpy as np, torch
torch.set_num_threads(1)
from napari_sickle.training.detector import load_detection_data, _split_items, predict_items, ap50
from napari_sickle.models.detector import RegionDetector
model, key, mode = sys.argv[1], sys.argv[2], sys.argv[3]
items, names, splits = load_detection_data(__import__('os').path.join(__import__('os').environ.get('SICKLE_DATA', '../shared/data'), 'bccd'), classes=['RBC'])
tr, va = _split_items(items, splits, 0.15, 0, 'train')
idx = va if key == 'valtr' else [i for i,s in enumerate(splits) if s=='val']
det = RegionDetector.from_checkpoint(model)
its = [items[i] for i in idx]
p = predict_items(det, its, tta=mode)
print(key, mode, ap50(p, [(it['boxes'], it['labels']) for it in its], names)['ap50'])
