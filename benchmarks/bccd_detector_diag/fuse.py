import pickle, numpy as np, sys, torch
from torchvision.ops import nms, box_iou
from napari_sickle.training.detector import average_precision
res = pickle.load(open(sys.argv[1],'rb'))
def wbf(vs, iou=0.55, nms_iou=0.5, mode='mean'):
    B=np.concatenate([v[0] for v in vs]); S=np.concatenate([v[1] for v in vs]); n=len(vs)
    if len(B)==0: return B,S
    Bt=torch.as_tensor(B,dtype=torch.float32); St=torch.as_tensor(S)
    keep=nms(Bt,St,nms_iou)
    M=box_iou(Bt[keep],Bt)  # clusters: boxes overlapping a kept box
    ob=[];os_=[]
    for r,k in enumerate(keep):
        m=(M[r]>=iou)
        # at most one box per variant: take the best in each
        sc=0; wb=np.zeros(4); ws=0
        off=0
        for v in vs:
            idx=np.arange(off,off+len(v[1])); off+=len(v[1])
            mm=m[idx].numpy()
            if mm.any():
                j=idx[mm][np.argmax(S[idx[mm]])]; sc+=S[j]; wb+=S[j]*B[j]; ws+=S[j]
        ob.append(wb/ws); os_.append(sc/n)
    return np.array(ob),np.array(os_)
for key in res:
    per=res[key]['per']; G=res[key]['gts']
    for th in (0.05,):
        out={}
        for combo in (['id'],['h'],['id','h'],['id','h','v','hv']):
            d=[]; d2=[]
            for v in per:
                vs=[(v[c][0][v[c][1]>=0.01],v[c][1][v[c][1]>=0.01]) for c in combo]
                b,s=wbf(vs) if len(combo)>1 else vs[0]
                k=s>=th; d.append((b[k],s[k]))
                # plain NMS union
                B=np.concatenate([x[0] for x in vs]);S=np.concatenate([x[1] for x in vs])
                kk=nms(torch.as_tensor(B),torch.as_tensor(S),0.5).numpy(); d2.append((B[kk],S[kk]))
            print(key,combo,'wbf AP',round(average_precision(d,G)[0],4),'nms-union AP',round(average_precision(d2,G)[0],4))
