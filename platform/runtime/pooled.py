"""The pooled exact GP spread over Ray actors, one row block of ``K + s2 I`` each.

The driver runs the preconditioned CG of ``gramfed.workers.pooled``; every product
``(K + s2 I) V`` is answered block-wise by the actors. X goes into the object store once;
each actor keeps its own copy on its device, owns rows ``[start, stop)`` and streams column
tiles of X through ``TiledKernel``, so its working memory is one tile plus the vectors of the
product whatever n is. It measures that memory (the allocator's peak on CUDA, the process
high-water mark on CPU) and reports it.

Needs a running Ray (``ray.init`` or a cluster address); nothing here starts one.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import ray
import torch
from torch import Tensor

from gramfed.platform.runtime.actors import ActorResources
from gramfed.workers.device import resolve_device
from gramfed.workers.kernels.base import Kernel
from gramfed.workers.pooled import IterationHook, PooledFit, PooledGP, PooledOptions, TiledKernel
from gramfed.workers.posterior import Prediction


@dataclass(frozen=True)
class WorkerMemory:
    """One actor's memory: ``peak_bytes`` is its process's high-water mark (RSS on CPU, the
    torch allocator's peak on CUDA); ``working_bytes`` the part above the mark it had when
    ready (X in place), i.e. what the products themselves needed."""

    start: int
    stop: int
    device: str
    peak_bytes: int
    working_bytes: int
    tile_rows: int
    tile_bytes: int


def _memory_mark(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@ray.remote
class GramRowBlock:
    """Rows ``[start, stop)`` of ``K + s2 I`` over all of X (resolved from the object store)."""

    def __init__(
        self,
        kernel: Kernel,
        x: np.ndarray,
        start: int,
        stop: int,
        noise_variance: float,
        options: PooledOptions,
    ) -> None:
        self.device = resolve_device(options.device)
        self.options = options
        # Object-store arrays are read-only views; the actor keeps its own copy on its device.
        self.x = torch.tensor(x, dtype=options.dtype, device=self.device)
        self.rows = slice(start, stop)
        self.noise_variance = noise_variance
        self.tiles = TiledKernel(kernel, options, self.device)
        # One tiny product first, so libraries loaded on first use are not counted as work.
        self.tiles.matmul(self.x[:1], self.x[:2], torch.ones(2, 1, dtype=torch.float64))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._ready_mark = _memory_mark(self.device)

    def _tensor(self, array: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.tensor(array, dtype=dtype, device=self.device)

    def matmul(self, v: np.ndarray) -> np.ndarray:
        """This block's rows of ``(K + s2 I) v``."""
        vt = self._tensor(v, torch.float64)
        out = self.tiles.matmul(self.x[self.rows], self.x, vt)
        return (out + self.noise_variance * vt[self.rows]).cpu().numpy()

    def cross_matmul(self, x_test: np.ndarray, v_rows: np.ndarray) -> np.ndarray:
        """``K(x_test, X[rows]) v_rows``: this block's share of a prediction."""
        xt = self._tensor(x_test, self.options.dtype)
        out = self.tiles.matmul(xt, self.x[self.rows], self._tensor(v_rows, torch.float64))
        return out.cpu().numpy()

    def cross(self, x_test: np.ndarray) -> np.ndarray:
        """``K(X[rows], x_test)``: this block's rows of the cross-covariance columns."""
        xt = self._tensor(x_test, self.options.dtype)
        return self.tiles.evaluate(self.x[self.rows], xt).cpu().numpy()

    def memory(self) -> WorkerMemory:
        peak = _memory_mark(self.device)
        return WorkerMemory(
            start=self.rows.start,
            stop=self.rows.stop,
            device=str(self.device),
            peak_bytes=peak,
            working_bytes=max(0, peak - self._ready_mark),
            tile_rows=self.tiles.tile_rows,
            tile_bytes=self.tiles.tile_rows
            * self.options.tile_cols
            * (torch.finfo(self.options.dtype).bits // 8),
        )


class RayKernelOperator:
    """``K + s2 I`` over X, one row block per Ray actor (a ``GramOperator``).

    Actors ask for one GPU each when the cluster has them, else an equal share of the CPUs.
    ``close`` (or dropping the operator) ends them.
    """

    def __init__(
        self,
        kernel: Kernel,
        x: Tensor,
        noise_variance: float,
        options: PooledOptions,
        workers: int,
    ) -> None:
        n = int(x.shape[0])
        if not 1 <= workers <= n:
            raise ValueError(f"workers must be between 1 and the {n} training rows, got {workers}")
        if not ray.is_initialized():
            raise RuntimeError("Ray is not running here: call ray.init() (or connect) first")
        self.n = n
        self.device = resolve_device(options.device)
        bounds = np.linspace(0, n, workers + 1).astype(int)
        self.blocks = [(int(a), int(b)) for a, b in pairwise(bounds)]
        x_ref = ray.put(np.ascontiguousarray(x.detach().cpu().numpy()))
        resources = ActorResources.for_cluster(workers)
        actor = GramRowBlock.options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)
        self.actors = [
            actor.remote(kernel, x_ref, a, b, float(noise_variance), options)
            for a, b in self.blocks
        ]

    @property
    def size(self) -> int:
        return self.n

    def _gather(self, refs: list[ray.ObjectRef]) -> list[Tensor]:
        return [torch.from_numpy(np.array(part)).to(self.device) for part in ray.get(refs)]

    def matmul(self, v: Tensor) -> Tensor:
        v_ref = ray.put(v.detach().cpu().numpy())
        return torch.cat(self._gather([a.matmul.remote(v_ref) for a in self.actors]))

    def cross_matmul(self, x_test: Tensor, v: Tensor) -> Tensor:
        xt = ray.put(x_test.detach().cpu().numpy())
        vn = v.detach().cpu().numpy()
        refs = [
            actor.cross_matmul.remote(xt, vn[a:b])
            for actor, (a, b) in zip(self.actors, self.blocks, strict=True)
        ]
        return torch.stack(self._gather(refs)).sum(0)

    def cross(self, x_test: Tensor) -> Tensor:
        xt = ray.put(x_test.detach().cpu().numpy())
        return torch.cat(self._gather([a.cross.remote(xt) for a in self.actors]))

    def memory(self) -> list[WorkerMemory]:
        return ray.get([a.memory.remote() for a in self.actors])

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


@dataclass(frozen=True)
class PooledRun:
    """A distributed pooled-GP fit, its predictions and what each worker needed.

    ``weights`` is ``(K + s2 I)^-1 y``: the mean at any x is ``K(x, X) weights``.
    """

    fit: PooledFit
    weights: Tensor
    prediction: Prediction | None
    workers: list[WorkerMemory]
    fit_seconds: float
    predict_seconds: float


def run_pooled(
    kernel: Kernel,
    x: Tensor,
    y: Tensor,
    noise_variance: float,
    x_test: Tensor | None = None,
    *,
    options: PooledOptions | None = None,
    workers: int = 2,
    on_iteration: IterationHook | None = None,
) -> PooledRun:
    """Fit the pooled GP on ``workers`` actors and predict ``x_test`` (means and variances)."""
    options = options or PooledOptions()
    operator = RayKernelOperator(kernel, x, noise_variance, options, workers)
    try:
        started = time.perf_counter()
        gp = PooledGP(kernel, x, y, noise_variance, options, operator=operator)
        fit = gp.fit(on_iteration)
        fitted = time.perf_counter()
        prediction = gp.predict(x_test) if x_test is not None else None
        predicted = time.perf_counter()
        return PooledRun(
            fit=fit,
            weights=gp.fitted_weights(),
            prediction=prediction,
            workers=operator.memory(),
            fit_seconds=fitted - started,
            predict_seconds=predicted - fitted,
        )
    finally:
        operator.close()
