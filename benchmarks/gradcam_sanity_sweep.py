"""Seeds and ViT variants behind tests/test_gradcam_sanity.py (figures in docs/bm.md).

    python benchmarks/gradcam_sanity_sweep.py families --seeds 0 1 2
        the test's loop and measures (napari_sickle.analysis.gradcam_check) for each family
        and seed, plus the two wrong-grid controls and the LayerNorm tiny_vit;
    python benchmarks/gradcam_sanity_sweep.py vit --layers 2 --targets "encoder.layers[-1].ln_1" ...
        a torchvision ViT of the given size, with or without LayerNorm (--no-layernorm),
        trained by the same loop; Grad-CAM (pytorch-grad-cam) on each target layer with the
        class-token-dropping reshape.

One torch thread. Prints one line per run: held-out accuracy, fraction of peaks within
radius + 6.4 px of the class granule, on the distractor, inside the granule.
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_sickle.analysis import gradcam_check as G


def data():
    return G.simulated_cells()


def families(args):
    train, test = data()
    for arch in args.archs:
        for seed in args.seeds:
            t0, c0 = time.time(), time.process_time()
            model = G.train_tiny(arch, train, seed=seed)
            res = G.check(model, test)
            print(
                f"{arch} seed {seed}: acc {res[0]:.2f} near {res[1]:.2f} distractor {res[2]:.2f} "
                f"inside {res[3]:.2f} ({time.time() - t0:.1f} s wall, {time.process_time() - c0:.1f} s cpu)",
                flush=True,
            )
            if arch == "tiny_vit":
                right = model.reshape_transform()
                for name, make in G.WRONG_GRIDS.items():
                    wrong = make(right)
                    model.reshape_transform = lambda w=wrong: w
                    res = G.check(model, test)
                    print(f"  control '{name}': near {res[1]:.2f} inside {res[3]:.2f}", flush=True)
                del model.reshape_transform
    if args.with_layernorm:
        for seed in args.seeds:
            res = G.check(G.train_tiny("tiny_vit", train, seed=seed, vit=None), test)  # the product's tiny_vit
            print(
                f"tiny_vit WITH LayerNorm seed {seed}: acc {res[0]:.2f} near {res[1]:.2f} "
                f"distractor {res[2]:.2f} inside {res[3]:.2f}",
                flush=True,
            )


def vit(args):
    import functools

    import torch.nn as nn
    from pytorch_grad_cam import GradCAM
    from torchvision.models.vision_transformer import VisionTransformer

    from napari_sickle.analysis.bm import preprocess
    from napari_sickle.models.bm import build_bm_model

    train, test = data()
    x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    xn = (x - mean[:, None, None]) / std[:, None, None]
    y = torch.from_numpy(train.labels).long()
    g = G.SIZE // G.GRID
    norm = (lambda d: nn.Identity()) if args.no_layernorm else functools.partial(nn.LayerNorm, eps=1e-6)

    def reshape(t):
        if t.dim() == 4:  # conv_proj: already (B, C, g, g)
            return t
        return t[:, 1:, :].reshape(t.shape[0], g, g, t.shape[2]).permute(0, 3, 1, 2)

    for seed in args.seeds:
        torch.manual_seed(seed)
        net = VisionTransformer(
            image_size=G.SIZE,
            patch_size=G.GRID,
            num_layers=args.layers,
            num_heads=args.heads,
            hidden_dim=args.hidden,
            mlp_dim=2 * args.hidden,
            num_classes=4,
            norm_layer=norm,
        )
        model = build_bm_model(
            "tiny_vit",
            train.class_names,
            pretrained=False,
            input_size=G.SIZE,
            mean=tuple(mean.tolist()),
            std=tuple(std.tolist()),
        )
        model.module = net
        steps = G.fit(net, xn, y, args.steps, args.lr, early_stop=not args.no_early_stop)
        xt = preprocess(list(test.images), model)
        with torch.no_grad():
            acc = float((net(xt).argmax(1).numpy() == test.labels).mean())
        line = f"seed {seed} steps {steps} acc {acc:.2f} |"
        for name in args.targets:
            layer = eval("net." + name, {"net": net})  # e.g. encoder.layers[-1].ln_1
            with GradCAM(net, [layer], reshape_transform=reshape) as cam:
                maps = cam(xt, None)
            near = G.peak_near(maps, test.marker_centres, test.marker_radius).mean()
            dis = G.peak_near(maps, test.distractor_centres, test.marker_radius).mean()
            line += f" {name}: near {near:.2f} distractor {dis:.2f}"
        print(line, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("families")
    f.add_argument("--archs", nargs="+", default=G.FAMILIES)
    f.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    f.add_argument("--with-layernorm", action="store_true", help="also the product's tiny_vit (LayerNorm)")
    v = sub.add_parser("vit")
    v.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    v.add_argument("--layers", type=int, default=1)
    v.add_argument("--hidden", type=int, default=48)
    v.add_argument("--heads", type=int, default=2)
    v.add_argument("--lr", type=float, default=1e-3)
    v.add_argument("--steps", type=int, default=300)
    v.add_argument("--no-early-stop", action="store_true")
    v.add_argument("--no-layernorm", action="store_true")
    v.add_argument(
        "--targets",
        nargs="+",
        default=["encoder.layers[-1].ln_1"],
        help="attribute paths on the network, e.g. encoder.layers[-2].ln_1 conv_proj",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    (families if args.mode == "families" else vit)(args)


if __name__ == "__main__":
    main()
