import pickle, numpy as np, sys, itertools
from napari_sickle.models.detector import fuse_tta
from napari_sickle.training.detector import average_precision
r = pickle.load(open(sys.argv[1],'rb')); per=r['per']; G=r['gts']
keys=list(per[0].keys())
def ap(sel, match_iou=0.55, th=0.05):
    d=[]
    for v in per:
        b,s,l=fuse_tta([v[k] for k in sel], match_iou=match_iou) if len(sel)>1 else v[sel[0]]
        k=s>=th; d.append((b[k],s[k]))
    return round(average_precision(d,G)[0],4)
sc=sorted({k[0] for k in keys})
for s in sc:
    sel=[k for k in keys if k[0]==s]
    print('scale',s,'id',ap(sel[:1]),'flips',ap(sel))
print('all', ap(keys))
for mi in (0.45,0.5,0.6,0.7):
    print('flips s1 match',mi, ap([k for k in keys if k[0]==1.0], match_iou=mi))
