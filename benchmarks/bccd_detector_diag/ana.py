import pickle, numpy as np, sys
from napari_sickle.training.detector import average_precision, _iou_one
res = pickle.load(open(sys.argv[1],'rb'))
W,H=640,480
def border(b, m=3):
    return (b[:,0]<=m)|(b[:,1]<=m)|(b[:,2]>=W-1-m)|(b[:,3]>=H-1-m)
for key in ('valtr','test'):
    r = res[key]; P=r['preds']; G=r['gts']
    dets=[(b[s>=0.05],s[s>=0.05]) for b,s,l in P]
    ap,n=average_precision(dets,G); print(key,'AP',round(ap,4),'ngt',n)
    g=np.concatenate(G); print(' gt border frac', border(g).mean().round(3))
    # match at score>=0.05 greedy by score: tp flags
    allb=[];alls=[];alltp=[];allbd=[]
    for (b,s),gt in zip(dets,G):
        o=np.argsort(-s); matched=np.zeros(len(gt),bool)
        for j in o:
            ious=_iou_one(b[j].astype(float),gt.astype(float)) if len(gt) else np.zeros(0)
            if len(gt): ious[matched]=-1
            t= len(gt)>0 and ious.max()>=0.5
            if t: matched[np.argmax(ious)]=True
            alls.append(s[j]); alltp.append(t); allbd.append(border(b[j:j+1])[0])
    alls=np.array(alls);alltp=np.array(alltp);allbd=np.array(allbd)
    for th in (0.5,0.8):
        k=alls>=th
        print(f' score>={th}: dets {k.sum()} tp {alltp[k].sum()} fp {(~alltp[k]).sum()}; fp at border {(~alltp[k]&allbd[k]).sum()}, tp at border {(alltp[k]&allbd[k]).sum()}')
    print(' max recall', alltp.sum()/n)
    # AP if border dets dropped
    for m in (3,):
        d2=[(b[~border(b,m)],s[~border(b,m)]) for b,s in dets]
        print(' AP drop border dets', round(average_precision(d2,G)[0],4))
    # AP if border-dets scores halved
    d3=[(b,np.where(border(b),s*0.5,s)) for b,s in dets]
    print(' AP border dets score*0.5', round(average_precision(d3,G)[0],4))
    # per-image AP spread
    aps=[a for a in (average_precision([d],[gt])[0] for d,gt in zip(dets,G)) if a is not None]
    print(' per-image AP quantiles', np.round(np.quantile(aps,[0,.1,.25,.5,.75,1]),3))
    # box sizes
    w=g[:,2]-g[:,0]; h=g[:,3]-g[:,1]; nb=~border(g)
    print(' gt w/h (non-border) quantiles', np.round(np.quantile(w[nb],[.05,.5,.95])), np.round(np.quantile(h[nb],[.05,.5,.95])), 'aspect', np.round(np.quantile((h/w)[nb],[.05,.5,.95]),2))
    print(' gt per image', np.quantile([len(x) for x in G],[0,.5,1]))
