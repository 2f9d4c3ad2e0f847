"""One fit of the bone-marrow / white-cell classifier on a training and a validation set, in
steps: load (model, cell views, loaders), then per schedule (``training.bm`` describes both)
setup, one training epoch, validation and saving."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .._progress import report
from .bm_data import _canonical, _CellDataset, _transforms, _ValDataset, channel_stats
from .recipes import BMRecipe

_HEAD_NAMES = {"vgg": "classifier.6", "resnet": "fc", "regnet": "fc", "vit": "heads.head", "efficientnet": "classifier"}


def family_of(arch: str) -> str:
    from ..models.bm import family

    return family(arch)


def _fit(
    train_imgs,
    train_y,
    val_imgs,
    val_y,
    class_names,
    out: Path,
    *,
    recipe: BMRecipe,
    device,
    resume,
    progress,
    log,
    stage="train",
    data_desc="",
    train_masks=None,
    record=None,
) -> dict:
    """Train on (train_imgs, train_y), score on (val_imgs, val_y); writes ``out/best.pt`` and
    ``out/last.pt``. ``record``: more entries for the checkpoint's recipe record (``n_masks``,
    ``val_paths``). Returns {"best_metric", "history", "val_proba", "lr"}."""
    run = _load(train_imgs, train_y, val_imgs, val_y, class_names, recipe, device, train_masks)
    run.data_desc, run.record_extra = data_desc, dict(record or {})
    if recipe.schedule == "cosine":
        return _fit_fixed(run, out, resume=resume, progress=progress, log=log, stage=stage)
    return _fit_plateau(run, out, resume=resume, progress=progress, log=log, stage=stage)


def _load(train_imgs, train_y, val_imgs, val_y, class_names, r: BMRecipe, device, train_masks) -> SimpleNamespace:
    """The model (its cell view set from the recipe), the training cells as that view frames
    them, their channel statistics, and the class-balanced training and validation loaders."""
    import torch

    from .._device import resolve_device
    from ..models.bm import build_bm_model, set_output_stride
    from . import distributed as ddp_glue

    torch.manual_seed(r.seed)
    np.random.seed(r.seed)
    dev = resolve_device(device)
    size = int(r.input_size)
    model = build_bm_model(r.backbone, class_names, pretrained=r.pretrained, input_size=size)
    model.normalise, model.crop, model.crop_factor = r.normalise, r.crop, float(r.crop_factor)
    set_output_stride(model, int(r.output_stride))
    if model.normalise != "none" or model.crop != "none" or train_masks is not None:
        # the cell as every later path sees it (analysis.bm.cell_view), once, at the input size
        train_imgs, train_masks = _canonical(train_imgs, model, size, train_masks)
    mean, std = channel_stats(train_imgs)
    model.mean, model.std = tuple(mean), tuple(std)
    net = model.module.to(dev)
    if family_of(model.arch) != "vit":  # less CPU per training step for CNNs (docs/bm.md)
        net = net.to(memory_format=torch.channels_last)
    train_tf = _transforms(
        size,
        mean,
        std,
        r.augment,
        r.crop_scale,
        colour=r.colour,
        scale_jitter=r.scale_jitter,
        fill=(1.0, 1.0, 1.0) if model.normalise == "background" else None,
    )
    counts = np.bincount(train_y, minlength=len(class_names)).astype(float)
    weights = 1.0 / counts[np.asarray(train_y)]
    # class-balanced draw, reseeded per epoch (set_epoch) and split over torchrun ranks
    sampler = ddp_glue.weighted_sampler(weights, len(train_y), seed=r.seed)
    bs = int(r.batch_size)  # per rank: the global batch is bs x world size
    erase = float(r.bg_erase) if train_masks is not None else 0.0
    fill = (255, 255, 255) if model.normalise == "background" else tuple(int(255 * m + 0.5) for m in mean)
    train_loader = torch.utils.data.DataLoader(
        _CellDataset(train_imgs, train_y, train_tf, train_masks, erase, fill),
        batch_size=bs,
        sampler=sampler,
        drop_last=len(sampler) > bs,
    )
    val_loader = torch.utils.data.DataLoader(_ValDataset(val_imgs, val_y, model, r.tta), batch_size=bs)
    return SimpleNamespace(
        recipe=r,
        model=model,
        net=net,
        dev=dev,
        class_names=class_names,
        train_loader=train_loader,
        val_loader=val_loader,
        criterion=torch.nn.CrossEntropyLoss(),
        n_train=len(train_y),
        n_val=len(val_y),
    )


def lr_range_test(
    model, loader, criterion, device, *, start=1e-5, end=1.0, steps=40, momentum=0.9, weight_decay=1e-4
) -> float:
    """Exponential lr sweep on a copy of the weights; a tenth of the lr at the lowest smoothed loss."""
    import copy

    import torch

    state = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=start, momentum=momentum, weight_decay=weight_decay)
    gamma = (end / start) ** (1.0 / max(steps - 1, 1))
    lrs, losses, smooth, best = [], [], None, math.inf
    model.train()
    it = iter(loader)
    for i in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        lr = start * gamma**i
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss = criterion(model(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        v = float(loss.detach())
        smooth = v if smooth is None else 0.7 * smooth + 0.3 * v
        lrs.append(lr)
        losses.append(smooth)
        best = min(best, smooth)
        if not math.isfinite(v) or smooth > 4 * best:
            break
    model.load_state_dict(state)
    if len(losses) < 4:
        return 1e-3
    # Smith's rule as fastai applies it: a tenth of the lr at the lowest smoothed loss. (The
    # steepest-descent point is noise on a flat curve, e.g. after a head warm-up: measured,
    # it picked the 1e-4 floor there.)
    lr = float(lrs[int(np.argmin(losses))]) / 10.0
    return float(min(max(lr, 1e-4), 0.1))


def _evaluate_loader(model, loader, criterion, device):
    import torch

    model.eval()
    total, n, ys, probs = 0.0, 0, [], []
    with torch.no_grad():
        for x, y in loader:
            if x.ndim == 5:  # (B, V, 3, S, S) test-time views: mean of the views' softmax
                b, v = x.shape[:2]
                prob = torch.softmax(model(x.flatten(0, 1).to(device)).float(), 1).view(b, v, -1).mean(1)
                total += float(torch.nn.functional.nll_loss(torch.log(prob.clamp_min(1e-12)), y.to(device))) * len(y)
            else:
                out = model(x.to(device)).float()
                total += float(criterion(out, y.to(device))) * len(y)
                prob = torch.softmax(out, 1)
            n += len(y)
            probs.append(prob.cpu().numpy())
            ys.append(y.numpy())
    p = np.concatenate(probs)
    return total / max(n, 1), p, np.concatenate(ys)


def _metrics(y_true, y_pred, class_names) -> dict:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    pr, rc, f1, sup = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {
        "macro_f1": float(mf),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class": {
            c: {"precision": float(pr[i]), "recall": float(rc[i]), "f1": float(f1[i]), "support": int(sup[i])}
            for i, c in enumerate(class_names)
        },
        "n": int(len(y_true)),
    }


def _train_one_epoch(run: SimpleNamespace, epoch: int, *, progress, stage, sched=None, ema=None) -> float:
    """One pass of the training loader; ``sched`` (stepped per batch) and ``ema`` (updated per
    batch) for the fixed schedule. Returns the mean loss over all ranks."""
    from . import distributed as ddp_glue

    net, opt, dev = run.net, run.opt, run.dev
    epochs, steps_per_epoch = int(run.recipe.epochs), len(run.train_loader)
    ddp_glue.set_epoch(run.train_loader, epoch)
    net.train()
    tot, n = 0.0, 0
    for step, (x, y) in enumerate(run.train_loader):
        opt.zero_grad()
        loss = run.train_criterion(run.ddp_net(x.to(dev)), y.to(dev))
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if ema is not None:
            ema.update_parameters(net)
        tot += float(loss.detach()) * len(y)
        n += len(y)
        ddp_glue.note_step(len(y))
        report(progress, stage, epoch * steps_per_epoch + step + 1, epochs * steps_per_epoch)
    return ddp_glue.reduce_mean(tot, n)  # over all ranks


def _validate(run: SimpleNamespace, criterion) -> tuple[float, np.ndarray, dict]:
    """(validation loss, class probabilities, metrics) of the current weights, split over ranks."""
    from . import distributed as ddp_glue

    net, dev = run.net, run.dev
    val_loss, p, yv = ddp_glue.evaluate_sharded(lambda ld: _evaluate_loader(net, ld, criterion, dev), run.val_loader)
    return val_loss, p, _metrics(yv, p.argmax(1), run.class_names)


def _checkpoint(run: SimpleNamespace, extra: dict | None = None) -> dict:
    """The model's checkpoint with the training recipe in its config (``config["recipe"]``)."""
    ck = run.model.to_checkpoint(extra)
    ck["config"]["recipe"] = run.recipe.asdict()
    return ck


def _check_classes(ckpt, resume, class_names) -> None:
    if list(ckpt["config"].get("class_names", [])) != list(class_names):
        raise ValueError(
            f"--resume {resume}: its classes {ckpt['config'].get('class_names')} differ "
            f"from the data's {list(class_names)}."
        )


# --------------------------------------------------------------------------- plateau schedule
def _fit_plateau(run: SimpleNamespace, out: Path, *, resume, progress, log, stage) -> dict:
    """The earlier recipe: lr range test, ReduceLROnPlateau on the validation loss, optional
    head-only warm-up epochs, ``best.pt`` = the best validation epoch."""
    from ..models.checkpoint import save_checkpoint
    from . import distributed as ddp_glue

    r, model = run.recipe, run.model
    _plateau_setup(run, resume, progress, log)
    run.train_criterion = run.criterion
    last_p = None
    for epoch in range(run.start_epoch, int(r.epochs)):
        ddp_glue.set_epoch(run.train_loader, epoch)  # before the fine-tuning range test draws from it
        head_only = _plateau_phase(run, epoch, log)
        train_loss = _train_one_epoch(run, epoch, progress=progress, stage=stage)
        val_loss, p, m = _validate(run, run.criterion)
        run.sched.step(val_loss)
        rec = {
            "event": "epoch",
            "epoch": epoch + 1,
            "epochs": int(r.epochs),
            "phase": "head" if head_only else "all",
            "loss": train_loss,
            "val_loss": val_loss,
            "metric": m["macro_f1"],
            "metric_name": "macro_f1",
            "accuracy": m["accuracy"],
            "lr": run.opt.param_groups[0]["lr"],
        }
        run.history.append(rec)
        if log:
            log(dict(rec))
        if m["macro_f1"] > run.best_metric:
            run.best_metric = m["macro_f1"]
            model.metrics = {k: v for k, v in m.items()}
            model.metrics["epoch"] = epoch + 1
            if ddp_glue.is_main():
                save_checkpoint(_checkpoint(run), out / "best.pt")
            last_p = p
        model_last = _checkpoint(
            run,
            extra={
                "optimizer": run.opt.state_dict(),
                "scheduler": run.sched.state_dict(),
                "epoch": epoch + 1,
                "history": run.history,
                "best_metric": run.best_metric,
            },
        )
        model_last["metrics"] = m
        if ddp_glue.is_main():
            save_checkpoint(model_last, out / "last.pt")
    if last_p is None:  # resumed after the last epoch: evaluate the best checkpoint
        from ..models.bm import load_bm_model

        best = load_bm_model(out / "best.pt")
        _, last_p, _ = _evaluate_loader(best.module.to(run.dev), run.val_loader, run.criterion, run.dev)
    return {"best_metric": run.best_metric, "history": run.history, "val_proba": last_p, "lr": run.lr}


def _range_test(run: SimpleNamespace) -> float:
    """Rank 0's learning-rate range test result on every rank; gradients cleared after it."""
    from . import distributed as ddp_glue

    net = run.net
    steps = int(run.recipe.lr_test_steps)
    lr = ddp_glue.broadcast(
        lr_range_test(net, run.train_loader, run.criterion, run.dev, steps=steps) if ddp_glue.is_main() else None
    )
    for prm in net.parameters():
        prm.grad = None
    return lr


def _plateau_setup(run: SimpleNamespace, resume, progress, log) -> None:
    """Learning rate (resumed, given or from a range test), SGD, the plateau schedule, the
    state of a resumed run, the recorded recipe and the DDP wrapper."""
    import torch

    from ..models.checkpoint import load_checkpoint
    from . import distributed as ddp_glue

    r, model, net = run.recipe, run.model, run.net
    run.start_epoch, run.history, run.best_metric = 0, [], -math.inf
    run.ckpt = None
    if resume:
        run.ckpt = load_checkpoint(resume, kind="bm")
        _check_classes(run.ckpt, resume, run.class_names)
        net.load_state_dict(run.ckpt["state_dict"])
        run.lr = float(run.ckpt["recipe"]["lr"])
    elif r.lr is not None:
        run.lr = float(r.lr)
    else:
        report(progress, "lr range test", 0, 1)
        run.lr = _range_test(run)
        report(progress, "lr range test", 1, 1)
        if log:
            log({"event": "lr_range_test", "lr": run.lr})
    run.opt = torch.optim.SGD(net.parameters(), lr=run.lr, momentum=0.9, weight_decay=float(r.weight_decay))
    run.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(run.opt, mode="min", factor=0.1, patience=int(r.patience))
    if run.ckpt is not None:
        ex = run.ckpt["extra"]
        run.opt.load_state_dict(ex["optimizer"])
        run.sched.load_state_dict(ex["scheduler"])
        run.start_epoch = int(ex["epoch"])
        run.history = list(ex.get("history", []))
        run.best_metric = float(ex.get("best_metric", -math.inf))
    run.warm = warm = min(int(r.warmup_epochs or 0), int(r.epochs))
    run.head_name = _HEAD_NAMES[family_of(model.arch)]
    model.recipe = {
        "arch": model.arch,
        "optimizer": "SGD",
        "momentum": 0.9,
        "lr": run.lr,
        "lr_source": "given" if r.lr is not None else "range test",
        "weight_decay": float(r.weight_decay),
        "scheduler": "ReduceLROnPlateau(factor=0.1, patience=%d)" % int(r.patience),
        "sampler": "WeightedRandomSampler",
        "augment": bool(r.augment),
        "crop_scale": list(r.crop_scale),
        "rotation": [0, 180],
        "flips": ["h", "v"],
        "epochs": int(r.epochs),
        "batch_size": int(r.batch_size),
        "input_size": int(r.input_size),
        "seed": int(r.seed),
        "pretrained": bool(r.pretrained),
        "data": run.data_desc,
        "n_train": run.n_train,
        "n_val": run.n_val,
        "warmup_epochs": warm,
        "warmup": f"first {warm} epoch(s) train only `{run.head_name}` (backbone frozen), "
        "then all layers (a second range test sets their lr unless lr is given)"
        if warm
        else "none",
        "lr_test_steps": int(r.lr_test_steps),
        "cache_size": r.cache_size,
        "val_paths": list(run.record_extra.get("val_paths") or []),
        "tta": r.tta,
    }
    run.ddp_net = ddp_glue.wrap(net, find_unused_parameters=bool(warm))  # DDP under torchrun, else net itself
    if ddp_glue.context().enabled:
        torch.manual_seed(r.seed + 1_000_003 * ddp_glue.rank())  # each rank its own augmentations


def _plateau_phase(run: SimpleNamespace, epoch: int, log) -> bool:
    """Freeze all but the head during the warm-up epochs; at the first fine-tuning epoch a
    fresh plateau schedule and (lr not given) a second range test over all layers. Returns
    whether only the head trains this epoch."""
    import torch

    r, warm = run.recipe, run.warm
    head_only = epoch < warm
    for name, prm in run.net.named_parameters():
        prm.requires_grad_(not head_only or name.startswith(run.head_name + "."))
    if warm and epoch == warm:
        # a fresh plateau counter for the fine-tuning phase: the head-only epochs'
        # validation losses must not count towards its patience
        run.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            run.opt, mode="min", factor=0.1, patience=int(r.patience)
        )
    if warm and epoch == warm and r.lr is None and run.ckpt is None:
        # fine-tuning phase: a second short range test, now over all layers
        lr2 = _range_test(run)
        for grp in run.opt.param_groups:
            grp["lr"] = lr2
        run.model.recipe["lr_finetune"] = lr2
        if log:
            log({"event": "lr_range_test", "lr": lr2, "phase": "all"})
    return head_only


# --------------------------------------------------------------------------- fixed schedule
def _fit_fixed(run: SimpleNamespace, out: Path, *, resume, progress, log, stage) -> dict:
    """Fixed schedule: SGD, one epoch of linear warm-up, cosine decay to zero, an exponential
    moving average (EMA) of the weights; the EMA weights after the last epoch are the model
    (no checkpoint is chosen on the validation cells, which are only scored, once, at the end)."""
    from ..models.checkpoint import save_checkpoint
    from . import distributed as ddp_glue

    r, model, net = run.recipe, run.model, run.net
    _fixed_setup(run, resume)
    for epoch in range(run.start_epoch, int(r.epochs)):
        loss = _train_one_epoch(run, epoch, progress=progress, stage=stage, sched=run.sched, ema=run.ema)
        rec = {
            "event": "epoch",
            "epoch": epoch + 1,
            "epochs": int(r.epochs),
            "phase": "all",
            "loss": loss,
            "lr": run.opt.param_groups[0]["lr"],
        }
        run.history.append(rec)
        if log:
            log(dict(rec))
        _save_fixed_last(run, out, epoch)
    final = run.ema.module if run.ema is not None else net
    net.load_state_dict(final.state_dict())  # model.module is net: it now holds the final weights
    if run.n_val:
        val_loss, p, m = _validate(run, run.train_criterion)
        m["val_loss"] = val_loss
    else:
        p, m = np.zeros((0, len(run.class_names))), {"n": 0}
    m["epoch"] = int(r.epochs)
    model.metrics = m
    if log and run.n_val:
        log(
            {
                "event": "heldout",
                "metric": m["macro_f1"],
                "metric_name": "macro_f1",
                "accuracy": m["accuracy"],
                "n": m["n"],
            }
        )
    if ddp_glue.is_main():
        save_checkpoint(_checkpoint(run), out / "best.pt")
    return {"best_metric": m.get("macro_f1", float("nan")), "history": run.history, "val_proba": p, "lr": run.lr}


def _fixed_setup(run: SimpleNamespace, resume) -> None:
    """SGD at the given lr (0.02 by default), per-step warm-up + cosine schedule, the EMA copy,
    the state of a resumed run, the recorded recipe and the DDP wrapper."""
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from ..models.checkpoint import load_checkpoint
    from . import distributed as ddp_glue

    r, model, net = run.recipe, run.model, run.net
    run.lr = lr = float(r.lr) if r.lr is not None else 0.02
    run.train_criterion = torch.nn.CrossEntropyLoss(label_smoothing=float(r.label_smoothing))
    run.opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=float(r.weight_decay))
    steps_per_epoch = len(run.train_loader)
    total = max(1, int(r.epochs) * steps_per_epoch)
    warm = steps_per_epoch

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    run.sched = torch.optim.lr_scheduler.LambdaLR(run.opt, factor)
    decay = float(r.ema)
    run.ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if decay > 0 else None
    run.start_epoch, run.history = 0, []
    if resume:
        ckpt = load_checkpoint(resume, kind="bm")
        _check_classes(ckpt, resume, run.class_names)
        ex = ckpt["extra"]
        net.load_state_dict(ex.get("raw_state_dict") or ckpt["state_dict"])
        run.opt.load_state_dict(ex["optimizer"])
        run.sched.load_state_dict(ex["scheduler"])
        if run.ema is not None and ex.get("ema_state") is not None:
            run.ema.load_state_dict(ex["ema_state"])
        run.start_epoch, run.history = int(ex["epoch"]), list(ex.get("history", []))
    model.recipe = _fixed_record(run, decay)
    run.ddp_net = ddp_glue.wrap(net)
    if ddp_glue.context().enabled:
        torch.manual_seed(r.seed + 1_000_003 * ddp_glue.rank())


def _fixed_record(run: SimpleNamespace, decay: float) -> dict:
    """The checkpoint's descriptive ``recipe`` dict of the fixed schedule."""
    r, model = run.recipe, run.model
    return {
        "arch": model.arch,
        "optimizer": "SGD",
        "momentum": 0.9,
        "lr": run.lr,
        "lr_source": "given" if r.lr is not None else "fixed default",
        "weight_decay": float(r.weight_decay),
        "schedule": "cosine",
        "scheduler": "linear warm-up 1 epoch, cosine decay to 0 (per step)",
        "ema": decay,
        "label_smoothing": float(r.label_smoothing),
        "selection": "last epoch (EMA weights)",
        "sampler": "WeightedRandomSampler",
        "augment": bool(r.augment),
        "colour": bool(r.colour),
        "scale_jitter": list(r.scale_jitter or []),
        "rotation": [0, 180],
        "flips": ["h", "v"],
        "normalise": model.normalise,
        "crop": model.crop,
        "output_stride": int(model.output_stride),
        "crop_factor": float(model.crop_factor),
        "bg_erase": float(r.bg_erase),
        "n_masks": int(run.record_extra.get("n_masks", 0)),
        "epochs": int(r.epochs),
        "batch_size": int(r.batch_size),
        "input_size": int(model.input_size),
        "seed": int(r.seed),
        "split_seed": int(r.split_seed),
        "pretrained": bool(r.pretrained),
        "data": run.data_desc,
        "n_train": run.n_train,
        "n_val": run.n_val,
        "val_paths": list(run.record_extra.get("val_paths") or []),
        "tta": r.tta,
    }


def _save_fixed_last(run: SimpleNamespace, out: Path, epoch: int) -> None:
    """last.pt with the EMA weights as the model and the raw weights, optimiser, schedule and
    EMA state for ``resume``; rank 0 only."""
    from ..models.checkpoint import save_checkpoint
    from . import distributed as ddp_glue

    if not ddp_glue.is_main():
        return
    net, ema = run.net, run.ema
    final = ema.module if ema is not None else net
    ck = _checkpoint(
        run,
        extra={
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "epoch": epoch + 1,
            "history": run.history,
            "raw_state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "ema_state": ema.state_dict() if ema is not None else None,
        },
    )
    ck["state_dict"] = {k: v.detach().cpu() for k, v in final.state_dict().items()}
    save_checkpoint(ck, out / "last.pt")
