"""Diagnostics for the BBBC041 U-Net Dice gap (docs/segmentation.md, "Why Dice stays near 0.91").

1. Resolution ceiling: the ground truth's own 3-class targets at a working scale, turned into
   one-hot probabilities, resized back and post-processed exactly like U-Net output.
2. Border convention: how many GT cells touch the image border, and watershed with and
   without ``skimage.segmentation.clear_border`` on the 6 held-out images.

3. With ``--model best.pt``: where that U-Net loses foreground Dice on its held-out images
   (the checkpoint's ``test_images``): false foreground in a 4 px band around true outlines
   (outline placement), false foreground in predicted objects with < 20 % ground truth
   (cells the annotators left out; "at edge" = touching the image border), missed
   foreground, and Dice / F1@0.5 with every object touching the image border left out of
   both prediction and ground truth.

4. ``--border-stats``: over all 24 images, how often a watershed object touching the border
   is annotated, by its area relative to a typical cell (the convention behind the U-Net's
   border rule, ``training.unet.border_objects``).
5. ``--watershed-check``: watershed at full resolution (``work_factor=1``) vs the default
   fast path on 3 simulated 1920x1080 smears and all 24 BBBC041 images (Dice, F1@0.5, CPU s).

6. ``--model M --sweep``: the U-Net post-processing choices on the model's training,
   validation and held-out images: the border rule's fraction (0, the fitted one, 0.75, 1,
   every border object dropped) at the foreground threshold 0.5, and the foreground threshold
   P(background) < t (0.3, 0.4, 0.5, 0.7) with the fitted fraction. Choose on train/val only.

7. ``--model M --compare``: per image of the model's training, validation and held-out sets,
   Dice / F1@0.5 with the size border rule (the stored ``border_min_fraction``), with the
   checkpoint's own rule (the logistic ``border_classifier`` when it has one), the same with
   8-fold flip/rot90 test-time augmentation, and two upper bounds not available at test time:
   oracle border decisions (a border object kept iff >= 50 % of it is in the mask) and, on
   top, the best foreground threshold of 0.2-0.8 per image.

    .venv/bin/python benchmarks/seg_diagnostics.py [--model runs/unet_bbbc041/best.pt [--sweep | --compare]] [--border-stats] [--watershed-check]
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from skimage.segmentation import clear_border

from napari_sickle._paths import sickle_data_dir
from napari_sickle.analysis.seg_metrics import segmentation_metrics
from napari_sickle.analysis.segmentation import (
    _read_pair,
    scan_pairs,
    segment_watershed,
    unet_probabilities_to_instances,
)
from napari_sickle.models.unet_processing import unet_targets as _targets

HELD_OUT = ["00a02700", "00d04a90", "0ab56f9a", "0ac747cd", "0d7bf56f", "0dcca702"]


def model_breakdown(model):
    from scipy import ndimage as ndi

    from napari_sickle.analysis.segmentation import segment_unet
    from napari_sickle.models.checkpoint import load_checkpoint
    from napari_sickle.models.unet import load_unet

    ck = load_checkpoint(model, kind="unet")
    net = load_unet(ck)
    names = set(ck["recipe"]["test_images"])
    rows = []
    for ip, mp in scan_pairs(sickle_data_dir() / "bbbc041seg"):
        if ip.stem not in names:
            continue
        img, gt = _read_pair(ip, mp, 30)
        lab = segment_unet(img, net, device="cpu")
        m = segmentation_metrics(lab, gt)
        p, g = lab > 0, gt > 0
        n = g.sum()
        band = ndi.binary_dilation(g, iterations=4) & ~ndi.binary_erosion(g, iterations=4)
        fp, fn = p & ~g, g & ~p
        ids = np.unique(lab[p])
        cov = np.asarray(ndi.mean(g, lab, ids))
        orphan = np.isin(lab, ids[cov < 0.2])
        edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        mi = segmentation_metrics(clear_border(lab), clear_border(gt))
        rows.append((m.dice, m.instance_f1_50, mi.dice, mi.instance_f1_50))
        print(
            f"{ip.stem[:8]}: U-Net Dice {m.dice:.3f} F1 {m.instance_f1_50:.3f} | false fg {fp.sum() / n:.3f} of GT area "
            f"(outline band {(fp & band).sum() / n:.3f}, unannotated objects {orphan.sum() / n:.3f}, "
            f"at edge {(orphan & np.isin(lab, edge)).sum() / n:.3f}) | missed {fn.sum() / n:.3f} "
            f"(outline band {(fn & band).sum() / n:.3f}) | border objects left out: Dice {mi.dice:.3f} "
            f"F1 {mi.instance_f1_50:.3f}",
            flush=True,
        )
    a = np.mean(rows, axis=0)
    print(f"mean: Dice {a[0]:.3f} F1 {a[1]:.3f} | border objects left out: Dice {a[2]:.3f} F1 {a[3]:.3f}")


def border_stats():
    from napari_sickle.training.unet import border_objects

    recs = []
    for ip, mp in scan_pairs(sickle_data_dir() / "bbbc041seg"):
        img, gt = _read_pair(ip, mp, 30)
        recs += border_objects(img, gt)[1]
    a = np.array([r for r, _ in recs])
    y = np.array([b for _, b in recs])
    for lo, hi in [(0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0), (1.0, 99)]:
        s = (a >= lo) & (a < hi)
        print(
            f"border objects with area {lo}-{hi} x typical cell: n {s.sum():3d}, annotated {y[s].mean():.2f}",
            flush=True,
        )


def watershed_check():
    import time

    from napari_sickle.analysis.seg_metrics import as_instances
    from napari_sickle.data.simulate import simulate_smear

    items = []
    for s in (7, 1000, 1001):
        sm = simulate_smear(seed=s, shape=(1080, 1920))
        items.append((sm.image, as_instances(sm.instances)))
    for ip, mp in scan_pairs(sickle_data_dir() / "bbbc041seg"):
        items.append(_read_pair(ip, mp, 30))
    for k in (1, "auto"):
        r = []
        for img, gt in items:
            c = time.process_time()
            lab = segment_watershed(img, work_factor=k)
            c = time.process_time() - c
            m = segmentation_metrics(lab, gt)
            r.append((m.dice, m.instance_f1_50, c))
        a = np.array(r)
        print(
            f"work_factor={k}: simulated Dice {a[:3, 0].mean():.3f} F1 {a[:3, 1].mean():.3f} CPU {a[:3, 2].mean():.2f} s"
            f" | BBBC041 (24) Dice {a[3:, 0].mean():.3f} F1 {a[3:, 1].mean():.3f} CPU {a[3:, 2].mean():.2f} s",
            flush=True,
        )


def sweep(model):
    from napari_sickle.analysis.segmentation import predict_unet_probabilities, unet_probabilities_to_instances
    from napari_sickle.models.checkpoint import load_checkpoint
    from napari_sickle.models.unet import load_unet

    ck = load_checkpoint(model, kind="unet")
    net = load_unet(ck)
    fitted = float(ck["config"].get("border_min_fraction", 0.0) or 0.0)
    min_size = int(round(30 / float(ck["config"]["scale"]) ** 2))
    sets = {k: set(ck["recipe"][k]) for k in ("train_images", "val_images", "test_images")}
    combos = [(0.5, f) for f in (0.0, fitted, 0.75, 1.0, 99.0)] + [(t, fitted) for t in (0.3, 0.4, 0.7)]
    res = {}
    for ip, mp in scan_pairs(sickle_data_dir() / "bbbc041seg"):
        which = [k for k in sets if ip.stem in sets[k]][0]
        img, gt = _read_pair(ip, mp, 30)
        probs = predict_unet_probabilities(img, net, device="cpu")
        for t, f in combos:
            q = probs.copy()
            q[0] = probs[0] - (t - 0.5)  # foreground = P(background) < t
            m = segmentation_metrics(unet_probabilities_to_instances(q, min_size=min_size, border_min_fraction=f), gt)
            res.setdefault((which, t, f), []).append((m.dice, m.instance_f1_50))
    for (which, t, f), v in sorted(res.items()):
        a = np.mean(v, axis=0)
        print(f"{which:12s} threshold {t:.1f} border fraction {f:5.2f}: Dice {a[0]:.3f} F1@0.5 {a[1]:.3f} (n={len(v)})")


def compare(model):
    from napari_sickle.analysis.segmentation import (
        drop_border_objects_by_classifier,
        predict_unet_probabilities,
        unet_probabilities_to_instances,
    )
    from napari_sickle.models.checkpoint import load_checkpoint
    from napari_sickle.models.unet import load_unet

    ck = load_checkpoint(model, kind="unet")
    net = load_unet(ck)
    cfg = net[1]
    frac = float(cfg.get("border_min_fraction", 0.0) or 0.0)
    clf = cfg.get("border_classifier") or None
    min_size = int(round(30 / float(cfg["scale"]) ** 2))
    sets = {k: set(ck["recipe"][k]) for k in ("train_images", "val_images", "test_images")}

    def oracle(lab, gt):
        edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        edge = edge[edge > 0]
        n = int(lab.max()) + 1
        area = np.bincount(lab.ravel(), minlength=n)
        cov = np.bincount(lab.ravel(), weights=(gt > 0).ravel(), minlength=n)
        drop = np.zeros(n, bool)
        drop[edge] = cov[edge] < 0.5 * area[edge]
        return np.where(drop[lab], 0, lab)

    def rule(lab):
        return drop_border_objects_by_classifier(lab, clf) if clf else lab

    cols = ("size rule", "checkpoint rule", "+ d4 TTA", "oracle border", "+ best threshold")
    res = {}
    print(f"border_min_fraction {frac}, border_classifier {clf}")
    for ip, mp in scan_pairs(sickle_data_dir() / "bbbc041seg"):
        which = [k for k in sets if ip.stem in sets[k]][0]
        img, gt = _read_pair(ip, mp, 30)
        p0 = predict_unet_probabilities(img, net, device="cpu", tta="none")
        p8 = predict_unet_probabilities(img, net, device="cpu", tta="d4")
        raw0 = unet_probabilities_to_instances(p0, min_size=min_size)
        labs = [
            unet_probabilities_to_instances(p0, min_size=min_size, border_min_fraction=frac),
            rule(raw0) if clf else unet_probabilities_to_instances(p0, min_size=min_size, border_min_fraction=frac),
            rule(unet_probabilities_to_instances(p8, min_size=min_size))
            if clf
            else unet_probabilities_to_instances(p8, min_size=min_size, border_min_fraction=frac),
            oracle(raw0, gt),
        ]
        ms = [segmentation_metrics(lab, gt) for lab in labs]
        best = ms[3]
        for t in (0.2, 0.3, 0.4, 0.6, 0.7, 0.8):
            q = p0.copy()
            q[0] = p0[0] - (t - 0.5)
            m = segmentation_metrics(oracle(unet_probabilities_to_instances(q, min_size=min_size), gt), gt)
            best = m if m.dice > best.dice else best
        ms.append(best)
        v = [(m.dice, m.instance_f1_50) for m in ms]
        res.setdefault(which, []).append(v)
        print(
            f"{which[:5]} {ip.stem[:8]}: " + " | ".join(f"{c} {d:.3f} / {f:.3f}" for c, (d, f) in zip(cols, v)),
            flush=True,
        )
    for which, v in res.items():
        a = np.mean(v, axis=0)
        print(f"mean {which} (n={len(v)}): " + " | ".join(f"{c} {d:.4f} / {f:.4f}" for c, (d, f) in zip(cols, a)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="U-Net checkpoint: break down its Dice loss on its test_images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--border-stats", action="store_true")
    ap.add_argument("--watershed-check", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="with --model: post-processing sweep")
    ap.add_argument("--compare", action="store_true", help="with --model: border rules, TTA and upper bounds per image")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model or args.border_stats or args.watershed_check:
        if args.model and args.sweep:
            sweep(args.model)
        elif args.model and args.compare:
            compare(args.model)
        elif args.model:
            model_breakdown(args.model)
        if args.border_stats:
            border_stats()
        if args.watershed_check:
            watershed_check()
        return
    pairs = [p for p in scan_pairs(sickle_data_dir() / "bbbc041seg") if p[0].stem[:8] in HELD_OUT]
    items = [(ip.stem[:8], *_read_pair(ip, mp, 30)) for ip, mp in pairs]
    for scale in (0.25, 0.5):
        ds, fs = [], []
        for _, img, gt in items:
            H, W = gt.shape
            t = _targets(gt, (round(H * scale), round(W * scale)))
            oh = F.one_hot(torch.from_numpy(t).long(), 3).permute(2, 0, 1).float()
            p = F.interpolate(oh[None], size=(H, W), mode="bilinear", align_corners=False, antialias=True)[0].numpy()
            m = segmentation_metrics(unet_probabilities_to_instances(p, min_size=int(30 / scale**2)), gt)
            ds.append(m.dice)
            fs.append(m.instance_f1_50)
        print(f"ceiling at scale {scale}: Dice {np.mean(ds):.3f}  F1@0.5 {np.mean(fs):.3f}", flush=True)
    for name, img, gt in items:
        nb = len(np.unique(gt)) - len(np.unique(clear_border(gt)))
        ws = segment_watershed(img)
        m0, m1 = segmentation_metrics(ws, gt), segmentation_metrics(clear_border(ws), gt)
        print(
            f"{name}: GT cells touching border {nb:2d}; watershed Dice {m0.dice:.3f} F1 {m0.instance_f1_50:.3f}"
            f" | border-cleared Dice {m1.dice:.3f} F1 {m1.instance_f1_50:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
