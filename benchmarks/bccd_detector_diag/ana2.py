import pickle, numpy as np, sys
from napari_sickle.training.detector import average_precision, _iou_one
res = pickle.load(open(sys.argv[1],'rb'))
W,H=640,480
for key in ('valtr','test'):
    r = res[key]; P=r['preds']; G=r['gts']
    for th in (0.05,0.01):
        dets=[(b[s>=th],s[s>=th]) for b,s,l in P]; print(key,th,'AP',round(average_precision(dets,G)[0],4))
    dets=[(b[s>=0.05],s[s>=0.05]) for b,s,l in P]
    cats={'dup':0,'loc':0,'bg':0,'mid':0}; 
    gtdup=0
    for (b,s),gt in zip(dets,G):
        gt=gt.astype(float)
        for i in range(len(gt)):
            io=_iou_one(gt[i],gt); io[i]=0
            gtdup+= (io>0.5).sum()
        o=np.argsort(-s); matched=np.zeros(len(gt),bool)
        for j in o:
            if s[j]<0.5: continue
            if len(gt)==0: cats['bg']+=1; continue
            ious=_iou_one(b[j].astype(float),gt)
            raw=ious.copy(); ious[matched]=-1
            if ious.max()>=0.5: matched[np.argmax(ious)]=True; continue
            if raw.max()>=0.5: cats['dup']+=1
            elif ious.max()>=0.3: cats['loc']+=1
            elif raw.max()>=0.1: cats['mid']+=1
            else: cats['bg']+=1
    print(' FP>=0.5 categories: dup(IoU>=.5 w/ matched gt)',cats['dup'],'loc(0.3-0.5 to unmatched)',cats['loc'],'overlap 0.1-0.5',cats['mid'],'no gt (<0.1)',cats['bg'], 'gt pairs IoU>0.5', gtdup//2)
