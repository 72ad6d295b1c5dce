"""The SLIM-KL reproduction benchmark: our fit beside the authors' stored figures."""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch

from gramfed.platform.datasets import slimkl_authors_split, slimkl_reference
from gramfed.workers.admm import RoundHook
from gramfed.workers.device import resolve_device
from gramfed.workers.estimator import GSMPRegressor, TransportFactory, in_process_transport
from gramfed.workers.posterior import mse, nlpd

Runtime = Literal["local", "ray"]


def bench_slimkl(
    name: str,
    *,
    agents: int = 2,
    bits: int | None = None,
    device: str = "auto",
    runtime: Runtime = "local",
    on_round: RoundHook | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Fit one shipped dataset and report accuracy, time and communication.

    Scored on the split the authors scored their stored results on, so that the two MSEs
    are of the same test points. ``runtime="ray"`` places the agents on Ray actors of the
    running Ray (one core each, so the J agents step in parallel), as ``gramfed run`` does;
    the fit time then includes building the agents on their actors.
    """
    split = slimkl_authors_split(name)
    model = GSMPRegressor(agents=agents, bits=bits, device=device, **params)
    model.fit(
        split.x_train, split.y_train, on_round=on_round, transport_factory=_transport(runtime)
    )
    started = time.perf_counter()
    y_test = torch.from_numpy(split.y_test)
    pooled = model.predict_distribution(split.x_test, mode="pooled")
    fused = model.predict_distribution(split.x_test, mode="fused")
    predict_seconds = time.perf_counter() - started
    rounds = model.admm_result_.rounds
    messages = sum(1 for _ in rounds) * agents * 2 + agents  # up and down every round, + final
    reference = slimkl_reference(name)
    return {
        "dataset": name,
        "agents": agents,
        "bits": bits,
        "test_mse": mse(pooled, y_test),
        "test_mse_fused_local": mse(fused, y_test),
        "nlpd": nlpd(pooled, y_test),
        "fit_seconds": model.fit_seconds_,
        "predict_seconds": predict_seconds,
        "admm_rounds": len(rounds),
        "converged": model.admm_result_.converged,
        "nonzero_weights": int(np.count_nonzero(model.weights_)),
        "components": model.grid_.num_components,
        "noise_variance": model.noise_variance_,
        "noise_at_gcv_limit": model.noise_at_gcv_limit_,
        "bits_sent": model.bits_sent_,
        "bits_float64_equivalent": messages * 64 * model.grid_.num_components,
        "device": str(resolve_device(device, work=_gram_work(model))),
        "runtime": runtime,
        "reference_test_mse": reference.test_mse if reference else None,
        "reference_time_s": reference.time_s if reference else None,
    }


def _transport(runtime: Runtime) -> TransportFactory:
    if runtime == "local":
        return in_process_transport
    if runtime != "ray":
        raise ValueError(f"runtime must be 'local' or 'ray', got {runtime!r}")
    import ray

    from gramfed.platform.runtime.transport import RayTransport

    if not ray.is_initialized():
        raise RuntimeError("runtime 'ray' needs a running Ray: call ray.init() (or connect) first")
    return RayTransport


def _gram_work(model: GSMPRegressor) -> int:
    """Gram entries per pass on the largest agent: what "auto" chose its device by."""
    largest = max(len(y) for _, y in model.shards_)
    return largest**2 * model.grid_.num_components
