"""Batch norm folded into the preceding convolution, for inference only.

In eval mode a ``BatchNorm2d`` right after a ``Conv2d`` is an affine map per channel, so it can
be folded into the convolution's weight and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``)
and the separate normalisation pass disappears from every forward call.

The conv -> batch norm pairs are found from the modules' own forward code: each module is
traced with ``torch.fx`` (convolutions and batch norms kept as leaves, so timm's padded
``Conv2dSame`` and ``BatchNormAct2d`` count as well), and a pair is folded only when the batch
norm's one input is the convolution's output and nothing else reads that output. A module that
cannot be traced (Faster R-CNN's top level, torchvision's FPN) is searched child by child; in an
``nn.Sequential`` (its own forward) adjacent children are a pair. Children that the traced
forward never calls (the classifier's learned cell splitter) are searched on their own. torchvision's ``FrozenBatchNorm2d`` folds like
``BatchNorm2d``; timm's ``BatchNormAct2d`` leaves its dropout and activation behind.

Folding is for inference: the folded module is put in eval mode, any later forward call in
training mode raises, and ``state_dict()`` raises (a checkpoint keeps its batch norms; load the
checkpoint again to train or save). :func:`inference_copy` folds a cached copy and leaves the
caller's module untouched (the white-cell classifier, whose module may still be trained or
explained with Grad-CAM).
"""

from __future__ import annotations

import copy
import warnings
import weakref

FOLDED_ATTR = "_sickle_bn_folded"  # set on the root module: number of folded pairs


class FoldedModelError(RuntimeError):
    """A module whose batch norms were folded for inference was asked to train or to save."""


def _frozen_bn_type():
    try:
        from torchvision.ops.misc import FrozenBatchNorm2d
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return (FrozenBatchNorm2d,)


def is_batchnorm(module) -> bool:
    """A 2-d batch norm: ``nn.BatchNorm2d`` (and subclasses) or torchvision's ``FrozenBatchNorm2d``."""
    import torch.nn as nn

    return isinstance(module, (nn.BatchNorm2d, *_frozen_bn_type()))


def _is_conv(module) -> bool:
    import torch.nn as nn

    return isinstance(module, nn.Conv2d)


def _tail(bn):
    """The module that replaces ``bn`` once folded (what it does after normalising), or None
    when ``bn`` cannot be folded (an unknown subclass, or no running statistics)."""
    import torch.nn as nn

    if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
        return None  # normalises with batch statistics even in eval mode
    forward = type(bn).forward
    if forward is nn.BatchNorm2d.forward or isinstance(bn, _frozen_bn_type()):
        return nn.Identity()
    if hasattr(bn, "act") and hasattr(bn, "drop"):  # timm BatchNormAct2d: norm, dropout, activation
        return nn.Sequential(bn.drop, bn.act)
    return None


def _tracer():
    import torch.fx

    class _LeafTracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return _is_conv(m) or is_batchnorm(m) or super().is_leaf_module(m, qualname)

    return _LeafTracer()


def _graph_pairs(graph, root) -> list[tuple[str, str]]:
    """(conv, batch norm) names in one traced graph: the norm's only input is the conv's
    output, nothing else reads it, and each module is called once."""
    mods = dict(root.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    out = []
    for node in graph.nodes:
        if node.op != "call_module" or not is_batchnorm(mods.get(node.target)):
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if getattr(src, "op", None) != "call_module" or not _is_conv(mods.get(src.target)):
            continue
        if len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1:
            out.append((src.target, node.target))
    return out


def _collect(module, prefix: str, pairs: list) -> None:
    import torch.nn as nn

    if _is_conv(module) or is_batchnorm(module) or not any(True for _ in module.children()):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = _tracer().trace(module)
    except Exception:  # noqa: BLE001 - data-dependent control flow: search the children instead
        graph = None
    if graph is not None:
        pairs.extend((prefix + c, prefix + b) for c, b in _graph_pairs(graph, module))
        called = {n.target for n in graph.nodes if n.op == "call_module"}
        for name, child in module.named_children():  # children forward never calls (a splitter)
            if not any(t == name or t.startswith(name + ".") for t in called):
                _collect(child, f"{prefix}{name}.", pairs)
        return
    if type(module).forward is nn.Sequential.forward:  # each child feeds the next one only
        kids = list(module.named_children())
        for (n1, m1), (n2, m2) in zip(kids, kids[1:]):
            if _is_conv(m1) and is_batchnorm(m2):
                pairs.append((prefix + n1, prefix + n2))
    for name, child in module.named_children():
        _collect(child, f"{prefix}{name}.", pairs)


def conv_bn_pairs(module) -> list[tuple[str, str]]:
    """Qualified names of the (convolution, batch norm) pairs of ``module`` that fold."""
    pairs: list[tuple[str, str]] = []
    modes = [(m, m.training) for m in module.modules()]
    module.eval()  # trace the inference code path
    try:
        _collect(module, "", pairs)
    finally:
        for m, mode in modes:  # each module's own mode back (a model may mix them)
            m.training = mode
    seen, out = set(), []
    for conv, bn in pairs:
        if conv not in seen and bn not in seen:
            seen.update((conv, bn))
            out.append((conv, bn))
    return out


def _refuse_training(module, args):
    if module.training:
        raise FoldedModelError(
            "this network's batch norms were folded into its convolutions for inference; "
            "load the checkpoint again to train it"
        )


def _refuse_state_dict(module, prefix, keep_vars):
    raise FoldedModelError(
        "this network's batch norms were folded into its convolutions for inference, so its "
        "state dict is not a checkpoint's; load the checkpoint again to save it"
    )


def _set(root, name: str, new) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def fold_batchnorm(module, pairs=None):
    """Fold every conv -> batch norm pair of ``module`` (``pairs``: from :func:`conv_bn_pairs`,
    found when None) in place and put it in eval mode.

    Returns ``module``; its attribute :data:`FOLDED_ATTR` holds the number of folded pairs.
    Only for a module that will never train or be saved again (see the module docstring)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if getattr(module, FOLDED_ATTR, None) is not None:
        return module
    module.eval()
    n = 0
    for conv_name, bn_name in conv_bn_pairs(module) if pairs is None else pairs:
        conv, bn = module.get_submodule(conv_name), module.get_submodule(bn_name)
        tail = _tail(bn)
        if tail is None:
            continue
        fused = fuse_conv_bn_eval(conv, bn)
        fused.register_forward_pre_hook(_refuse_training)
        _set(module, conv_name, fused)
        _set(module, bn_name, tail.eval())
        n += 1
    module.register_state_dict_pre_hook(_refuse_state_dict)
    setattr(module, FOLDED_ATTR, n)
    return module


def is_folded(module) -> bool:
    return getattr(module, FOLDED_ATTR, None) is not None


def prepare_inference(module, device, fold: bool = True, channels_last: bool | None = None):
    """Ready a freshly loaded network for inference on ``device``: batch norm folded (unless
    ``fold=False``), eval mode, and the weights in channels_last (NHWC) layout when
    ``channels_last`` is True; None means on CUDA only (the layout the GPU's fp16 convolutions
    prefer). Callers pass True for networks where NHWC was measured faster on the CPU
    (docs/performance.md). Apple MPS keeps NCHW. Returns ``module``."""
    import torch

    if fold:
        fold_batchnorm(module)
    module.eval()
    kind = torch.device(device).type
    nhwc = kind == "cuda" if channels_last is None else bool(channels_last) and kind in ("cpu", "cuda")
    if nhwc:
        module.to(memory_format=torch.channels_last)
    return module


_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(module) -> tuple:
    """Changes when a tensor of ``module`` is replaced, moved or modified in place."""

    def version(t):
        try:
            return t._version
        except RuntimeError:  # an inference tensor keeps no version counter
            return None

    return tuple((t.data_ptr(), version(t), t.dtype) for t in (*module.parameters(), *module.buffers()))


def inference_copy(module):
    """``module`` in eval mode with its batch norms folded, as a copy made once and reused
    while ``module``'s tensors stay the same. ``module`` itself keeps its batch norms; the copy
    shares every tensor the fold leaves alone (heads, attention), so it costs the memory of the
    folded convolutions only. A module with nothing to fold (a ViT) is returned as it is."""
    module.eval()
    key = _fingerprint(module)
    hit = _COPIES.get(module)
    if hit is None or hit[0] != key:
        pairs = conv_bn_pairs(module)
        folded = None
        if pairs:
            shared = {id(t): t for t in (*module.parameters(), *module.buffers())}
            folded = fold_batchnorm(copy.deepcopy(module, shared), pairs)
        hit = _COPIES[module] = (key, folded)
    return module if hit[1] is None else hit[1]
