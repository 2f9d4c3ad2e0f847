"""Thin glue between the trainers and PyTorch's own distributed engine (``torchrun``).

Nothing here runs processes or talks over the network itself: ``torchrun`` starts the
workers and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``;
:func:`init_from_env` turns that into a ``torch.distributed`` process group (``nccl`` on
CUDA, ``gloo`` otherwise). Without those variables every function is a no-op for a single
process (rank 0 of 1), so the trainers have one code path.

What the trainers use:

* :func:`wrap` - ``DistributedDataParallel`` (gradients are averaged over the ranks at every
  ``backward()``); BatchNorm becomes ``SyncBatchNorm`` on CUDA (it has no CPU kernel, so
  with gloo on CPU every rank keeps its own batch statistics).
* :func:`weighted_sampler` - a class-balanced ``WeightedRandomSampler`` that stays correct
  across ranks: every rank draws the same global index sequence from a per-epoch seed
  (``seed + epoch``) and keeps its strided share ``[rank::world]``, as
  ``DistributedSampler`` does for plain shuffling (:func:`sampler`).
* :func:`reduce_sums` / :func:`reduce_mean` - ``all_reduce`` of per-rank sums and counts,
  :func:`map_sharded` - each rank evaluates ``items[rank::world]`` and every rank gets all
  results back in order (``all_gather_object``).
* :func:`is_main` - only rank 0 logs and writes checkpoints; :func:`barrier`, :func:`cleanup`.
* :func:`note_step` / :func:`rank_counts` - per-rank optimizer steps and samples, gathered at
  the end so a run can show that every rank trained.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

#: Environment variable torchrun sets for every worker; used to detect a torchrun launch.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: Process-group timeout in minutes (ranks may wait this long for rank 0, e.g. multilabel).
TIMEOUT_ENV = "NAPARI_SICKLE_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 240


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: not distributed
    device: Any = None  # torch.device of this rank, or None (trainer decides)

    @property
    def enabled(self) -> bool:
        return self.backend is not None and self.world_size > 1

    @property
    def restart(self) -> int:
        """How many times torchrun has restarted the workers (0 on the first attempt)."""
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


_CTX = DistContext()
_COUNTS = {"steps": 0, "samples": 0}


def launched_by_torchrun() -> bool:
    return all(v in os.environ for v in TORCHRUN_VARS)


def context() -> DistContext:
    return _CTX


def rank() -> int:
    return _CTX.rank


def world_size() -> int:
    return _CTX.world_size


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs and writes checkpoints."""
    return _CTX.rank == 0


def init_from_env(device: str = "auto") -> DistContext:
    """Start the process group from torchrun's environment; no-op in a plain process.

    ``device``: the trainer's ``--device`` choice. On CUDA each rank uses GPU
    ``LOCAL_RANK`` (``torch.cuda.set_device``), so the trainers' plain ``"cuda"`` means that GPU.
    """
    global _CTX
    if _CTX.backend is not None:
        return _CTX
    if not launched_by_torchrun():
        return _CTX
    import torch
    import torch.distributed as dist

    rank_, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    want = (device or "auto").lower()
    use_cuda = torch.cuda.is_available() and want in ("auto", "cuda") or want.startswith("cuda:")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("Device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'.")
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA GPU(s) on this node; "
                "use --nproc_per_node <= the number of GPUs."
            )
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=minutes)
        dist.init_process_group(
            backend=backend,
            timeout=timeout,
            store=_attempt_store(rank_, world, timeout),
            rank=rank_,
            world_size=world,
            **({"device_id": dev} if backend == "nccl" else {}),
        )
    _CTX = DistContext(rank=rank_, world_size=world, local_rank=local, backend=backend, device=dev)
    return _CTX


def _attempt_store(rank_: int, world: int, timeout):
    """The ``MASTER_ADDR:MASTER_PORT`` TCPStore (env:// rendezvous), prefixed per torchrun attempt.

    torchrun's agent keeps one store across ``--max-restarts`` restarts; without a prefix the
    restarted workers read the previous attempt's gloo addresses from it and fail to connect
    (seen with torch 2.14). ``torch.distributed.PrefixStore`` with ``TORCHELASTIC_RESTART_COUNT``
    gives each attempt its own keys."""
    import torch.distributed as dist

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=(rank_ == 0 and not agent),
        timeout=timeout,
        multi_tenant=not agent,
    )
    return dist.PrefixStore(f"napari_sickle/attempt_{_CTX.restart}", store)


def cleanup(success: bool = True) -> None:
    """Barrier (only after success: a failed rank must not wait for the others) and destroy."""
    global _CTX
    if _CTX.backend is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            if success:
                dist.barrier()
        finally:
            dist.destroy_process_group()
    _CTX = DistContext()


def exit_process(code: int | None) -> NoReturn:
    """Leave the process with ``code``: ``SystemExit`` normally; ``os._exit`` under torchrun.

    Gloo's worker threads free the last collectives' tensors just after those collectives
    return, and freeing a tensor that Python once held takes the GIL. When the interpreter is
    already shutting down, that aborts the process ("terminate called without an active
    exception", SIGABRT) and torchrun reports a finished run as failed. Under torchrun the
    output is flushed and the interpreter's shutdown skipped."""
    code = 0 if code is None else int(code)
    if not launched_by_torchrun():
        raise SystemExit(code)
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to save
            pass
    os._exit(code)


def barrier() -> None:
    if _CTX.enabled:
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------------------ models
def wrap(model, device=None, *, find_unused_parameters: bool = False):
    """``DistributedDataParallel(model)`` when distributed (SyncBatchNorm on CUDA); else ``model``.

    Train through the returned module; save ``model`` (the unwrapped one, same parameters)."""
    if not _CTX.enabled:
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    if _CTX.backend == "nccl":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DDP(
            model,
            device_ids=[_CTX.local_rank],
            output_device=_CTX.local_rank,
            find_unused_parameters=find_unused_parameters,
        )
    return DDP(model, find_unused_parameters=find_unused_parameters)


def unwrap(model):
    return getattr(model, "module", model) if _CTX.enabled else model


# ------------------------------------------------------------------------------ samplers
def sampler(dataset, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
    """``DistributedSampler`` when distributed (call ``set_epoch``); else None (DataLoader's own)."""
    if not _CTX.enabled:
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(
        dataset, num_replicas=_CTX.world_size, rank=_CTX.rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )


class DistributedWeightedSampler:
    """``WeightedRandomSampler`` (with replacement) split over the ranks.

    Epoch ``e`` draws ``num_samples`` global indices with a generator seeded ``seed + e`` -
    the same on every rank - and yields this rank's strided share ``[rank::world]``. Over the
    ranks the union is exactly the single-process draw, so class balance and the sequence of
    global batches do not depend on the number of ranks. ``set_epoch(e)`` as for
    ``DistributedSampler``; in a single process it is a reseeded ``WeightedRandomSampler``.
    """

    def __init__(
        self,
        weights,
        num_samples: int | None = None,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        import torch

        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.world = int(world_size if world_size is not None else _CTX.world_size)
        self.rank = int(rank if rank is not None else _CTX.rank)
        n = int(num_samples if num_samples is not None else len(self.weights))
        self.per_rank = -(-n // self.world)  # ceil: every rank takes the same number of steps
        self.total = self.per_rank * self.world
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_indices(self) -> list[int]:
        import torch
        from torch.utils.data import WeightedRandomSampler

        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return list(WeightedRandomSampler(self.weights, self.total, replacement=True, generator=g))

    def __iter__(self):
        return iter(self.global_indices()[self.rank :: self.world])

    def __len__(self) -> int:
        return self.per_rank


def weighted_sampler(weights, num_samples: int | None = None, *, seed: int = 0) -> DistributedWeightedSampler:
    return DistributedWeightedSampler(weights, num_samples, seed=seed)


def shard(items: Sequence) -> list:
    """This rank's strided share ``items[rank::world]`` (all items in a single process)."""
    return list(items)[_CTX.rank :: _CTX.world_size]


def set_epoch(loader_or_sampler, epoch: int) -> None:
    s = getattr(loader_or_sampler, "sampler", loader_or_sampler)
    if hasattr(s, "set_epoch"):
        s.set_epoch(epoch)


# ------------------------------------------------------------------------------ reductions
def reduce_sums(values: dict[str, float]) -> dict[str, float]:
    """Sum each value over the ranks (``all_reduce``, SUM); unchanged in a single process."""
    if not _CTX.enabled or not values:
        return dict(values)
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor(
        [float(values[k]) for k in keys], dtype=torch.float64, device=_CTX.device if _CTX.backend == "nccl" else "cpu"
    )
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.cpu().tolist())}


def reduce_mean(total: float, count: float) -> float:
    """Global mean from per-rank ``total`` (a sum) and ``count``."""
    r = reduce_sums({"total": total, "count": count})
    return r["total"] / max(r["count"], 1e-12)


def broadcast(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if not _CTX.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``all_gather_object``)."""
    if not _CTX.enabled:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * _CTX.world_size
    dist.all_gather_object(out, obj)
    return out


def map_sharded(fn: Callable[[Any], Any], items: Sequence) -> list:
    """``[fn(x) for x in items]`` with each rank doing ``items[rank::world]``; all ranks get the
    whole list in the original order (validation split over the ranks)."""
    items = list(items)
    mine = [fn(x) for x in shard(items)]
    if not _CTX.enabled:
        return mine
    parts = gather(mine)
    out: list = [None] * len(items)
    for r, part in enumerate(parts):
        out[r :: _CTX.world_size] = part
    return out


# ------------------------------------------------------------------------------ bookkeeping
def note_step(n_samples: int) -> None:
    """Count one optimizer step of ``n_samples`` on this rank (reported in the ``done`` event)."""
    _COUNTS["steps"] += 1
    _COUNTS["samples"] += int(n_samples)


def rank_counts() -> list[dict]:
    """[{rank, steps, samples}, ...] over all ranks (collective: every rank must call it)."""
    mine = {"rank": _CTX.rank, "steps": _COUNTS["steps"], "samples": _COUNTS["samples"]}
    return gather(mine)


def auto_resume_path(out, resume=None) -> str | None:
    """The checkpoint to resume from: ``resume`` if given (``"auto"`` = ``out/last.pt`` if it
    exists); under torchrun, ``out/last.pt`` whenever it exists, so workers restarted by
    ``torchrun --max-restarts`` continue where the run stopped."""
    last = Path(out).expanduser() / "last.pt"
    if resume not in (None, "auto"):
        return str(resume)
    if resume == "auto" or launched_by_torchrun():
        return str(last) if last.is_file() else None
    return None


def evaluate_sharded(fn: Callable, loader):
    """Validation split over the ranks: ``fn(loader) -> (mean_loss, probs (n, k), ys (n,))`` runs
    on this rank's ``[rank::world]`` share of ``loader.dataset``; the loss is reduced
    (``all_reduce``) and the rows gathered back into dataset order on every rank."""
    if not _CTX.enabled:
        return fn(loader)
    import numpy as np
    from torch.utils.data import DataLoader, Subset

    n = len(loader.dataset)
    idx = list(range(n))[_CTX.rank :: _CTX.world_size]
    mine = DataLoader(
        Subset(loader.dataset, idx),
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
    )
    if idx:
        loss, p, y = fn(mine)
    else:
        loss, p, y = 0.0, None, None
    mean = reduce_mean(float(loss) * len(idx), len(idx))
    parts = gather((p, y))
    k = next(pp.shape[1] for pp, _ in parts if pp is not None)
    probs = np.zeros((n, k), dtype=next(pp.dtype for pp, _ in parts if pp is not None))
    ys = np.zeros(n, dtype=next(yy.dtype for _, yy in parts if yy is not None))
    for r, (pp, yy) in enumerate(parts):
        if pp is not None:
            probs[r :: _CTX.world_size] = pp
            ys[r :: _CTX.world_size] = yy
    return mean, probs, ys


def sharded_mean(fn: Callable[[list], dict], items: Sequence) -> dict:
    """``fn(items)`` -> dict of means, computed over the ranks: each rank calls ``fn`` on its
    ``[rank::world]`` share and the per-rank means are combined, weighted by share size
    (``all_reduce``). Exact for means of per-item values; in a single process just ``fn(items)``."""
    if not _CTX.enabled:
        return fn(list(items))
    mine = shard(items)
    part = fn(mine) if mine else {}
    keys = sorted(set().union(*gather(sorted(part))))  # a rank with no items still knows the keys
    sums = {k: float(part.get(k, 0.0)) * len(mine) for k in keys}
    sums["__n__"] = float(len(mine))
    tot = reduce_sums(sums)
    n = max(tot.pop("__n__"), 1e-12)
    return {k: v / n for k, v in tot.items()}
