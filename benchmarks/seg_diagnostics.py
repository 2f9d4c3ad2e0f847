"""Diagnostics for the BBBC041 U-Net Dice gap (docs/segmentation.md, "Why Dice stays near 0.91").

1. Resolution ceiling: the ground truth's own 3-class targets at a working scale, turned into
   one-hot probabilities, resized back and post-processed exactly like U-Net output.
2. Border convention: how many GT cells touch the image border, and watershed with and
   without ``skimage.segmentation.clear_border`` on the 6 held-out images.

    .venv/bin/python benchmarks/seg_diagnostics.py
"""
import numpy as np
import torch
import torch.nn.functional as F
from skimage.segmentation import clear_border

from napari_sickle._paths import sickle_data_dir
from napari_sickle.analysis.seg_metrics import segmentation_metrics
from napari_sickle.analysis.segmentation import _read_pair, scan_pairs, segment_watershed, unet_probabilities_to_instances
from napari_sickle.training.unet import _targets

HELD_OUT = ["00a02700", "00d04a90", "0ab56f9a", "0ac747cd", "0d7bf56f", "0dcca702"]


def main():
    torch.set_num_threads(2)
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
        print(f"{name}: GT cells touching border {nb:2d}; watershed Dice {m0.dice:.3f} F1 {m0.instance_f1_50:.3f}"
              f" | border-cleared Dice {m1.dice:.3f} F1 {m1.instance_f1_50:.3f}", flush=True)


if __name__ == "__main__":
    main()
