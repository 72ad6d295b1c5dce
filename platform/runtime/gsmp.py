"""The ``gsmp_fit`` job kind: fit a GSMP multiple-kernel GP, release its results exactly.

One code path for ``gramfed fit`` (agents in this process) and ``gramfed run``/``submit``
(agents on Ray worker actors, ADMM state checkpointed every round, resumable). A GSMP fit is
not differentially private, so its weights, metrics and predictions leave as exact releases to
the job's recipient, which the job's pool must trust; the audit report lists them as non-DP.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import torch

from gramfed.platform.jobspec import JobSpec, load_job_data
from gramfed.platform.runtime.checkpoint import Checkpoint, checkpoint_path, job_digest, load, save
from gramfed.platform.runtime.jobs import JobContext
from gramfed.workers.admm import ADMMState
from gramfed.workers.estimator import AgentRecipe, GSMPRegressor, Shard
from gramfed.workers.posterior import mse, nlpd
from gramfed.workers.transport import Transport


def run_gsmp_fit(spec: JobSpec, ctx: JobContext) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = load_job_data(spec.data)
    model = GSMPRegressor(**spec.estimator_params())
    placement = _RayPlacement(spec, ctx) if ctx.distributed else None
    fit_options = placement.fit_options() if placement is not None else {}
    try:
        with ctx.progress(spec.job.name, spec.admm.max_iter) as on_round:
            model.fit(x_train, y_train, on_round=on_round, **fit_options)
    finally:
        if placement is not None:
            placement.close()
    extra = placement.summary() if placement is not None else {}
    summary = _release_results(model, spec, ctx, x_test, y_test, len(y_train), extra)
    if placement is not None:
        placement.discard_checkpoint()
    return summary


def _release_results(
    model: GSMPRegressor,
    spec: JobSpec,
    ctx: JobContext,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    samples: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    privacy, writer = ctx.privacy, ctx.writer
    active = np.flatnonzero(model.weights_)
    summary: dict[str, Any] = {
        "name": spec.job.name,
        "kind": spec.job.kind,
        "samples": samples,
        "agents": spec.admm.agents,
        "components": model.grid_.num_components,
        "nonzero_weights": int(active.size),
        "noise_variance": model.noise_variance_,
        "noise_at_gcv_limit": model.noise_at_gcv_limit_,
        "admm_rounds": len(model.admm_result_.rounds),
        "converged": model.admm_result_.converged,
        "fit_seconds": model.fit_seconds_,
        "bits_sent": model.bits_sent_,
        "test_mse": None,
        "nlpd": None,
        "output_dir": str(ctx.output_dir),
        "ledger": str(privacy.ledger_path),
        "distributed": ctx.distributed,
        **extra,
    }
    if x_test is not None and y_test is not None:
        prediction = model.predict_distribution(x_test)
        target = torch.from_numpy(y_test)
        summary["test_mse"], summary["nlpd"] = mse(prediction, target), nlpd(prediction, target)
        columns = {"y": y_test, "mean": prediction.mean.numpy(), "std": prediction.std.numpy()}
        writer.write(
            "predictions.csv",
            privacy.release_exact(columns, "GSMP posterior predictions on the test inputs"),
        )
    model_record = {
        "grid_means": model.grid_.means[active].tolist(),
        "grid_scales": model.grid_.scales[active].tolist(),
        "component_index": active.tolist(),
        "weights": model.weights_[active].tolist(),
        "noise_variance": model.noise_variance_,
    }
    writer.write("model.json", privacy.release_exact(model_record, "GSMP kernel (non-zero part)"))
    writer.write(
        "weights.npy", privacy.release_exact(model.weights_.copy(), "GSMP consensus weights")
    )
    writer.write("summary.json", privacy.release_exact(summary, "GSMP fit metrics"))
    return summary


class _RayPlacement:
    """Agents on Ray actors, with the ADMM state checkpointed after every round."""

    def __init__(self, spec: JobSpec, ctx: JobContext) -> None:
        self.path = checkpoint_path(ctx.output_dir)
        self.digest = job_digest(spec.model_dump_json(exclude={"output", "privacy"}))
        self.saved = load(self.path, self.digest) if ctx.resume else None
        self.transport: Any = None

    def fit_options(self) -> dict[str, Any]:
        return {
            "transport_factory": self._transport,
            "checkpoint": self._save,
            "resume_from": None if self.saved is None else self.saved.admm,
        }

    def _transport(self, recipe: AgentRecipe, shards: list[Shard]) -> Transport:
        from gramfed.platform.runtime.transport import RayTransport

        states = None if self.saved is None else self.saved.agents
        self.transport = RayTransport(recipe, shards, states=states)
        return self.transport

    def _save(self, state: ADMMState) -> None:
        checkpoint = Checkpoint(self.digest, state, self.transport.states)
        save(self.path, checkpoint)

    def summary(self) -> dict[str, Any]:
        return {
            "worker_recoveries": self.transport.recoveries,
            "resumed_from_round": None if self.saved is None else self.saved.admm.round,
        }

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def discard_checkpoint(self) -> None:
        """A finished job needs no checkpoint; results then hold only released files."""
        shutil.rmtree(self.path.parent, ignore_errors=True)
