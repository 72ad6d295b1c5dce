"""The ``dp_gsmp`` job kind: differentially private GSMP, one priced release per agent.

Each agent's shard goes to its own Ray actor (``gramfed run``/``submit``; in this process for
``gramfed fit``), which computes the shard's sufficient statistics there. The driver's gate
prices each agent's release from public parameters, checks the agent's pool, and only then
asks the actor for its statistics and noises them (``DPGSMPRegressor.fit``): exactly one
priced release per agent. Agent j's pool is ``<pool dataset>.agent<j>`` with the job's
(epsilon, delta) budget (one pool when there is one agent). Learning the weights and the
predictions at the test inputs are post-processing of those releases, written with their
provenance. The summary holds only public parameters and released quantities: the test
targets are not used, so no test error leaves the job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gramfed.platform.jobspec import JobSpec, load_job_data
from gramfed.platform.runtime.jobs import JobContext
from gramfed.workers.dp_gsmp.estimator import (
    DPGSMPRegressor,
    StatisticsRecipe,
    local_statistics,
)
from gramfed.workers.dp_gsmp.statistics import SufficientStatistics
from gramfed.workers.estimator import Shard


def regressor_for(spec: JobSpec) -> DPGSMPRegressor:
    """The unfitted model a ``dp_gsmp`` job spec describes."""
    assert spec.dp.y_lo is not None and spec.dp.y_hi is not None  # JobSpec validates it
    return DPGSMPRegressor(
        target_range=(spec.dp.y_lo, spec.dp.y_hi),
        agents=spec.admm.agents,
        components_per_dim=spec.model.components_per_dim or 1,
        features_per_component=spec.dp.features_per_component,
        freq_lower=spec.model.freq_lower,
        freq_upper=spec.model.freq_upper,
        scale=spec.model.scale,
        sampling=spec.model.sampling,
        bits=spec.admm.bits,
        step=spec.admm.step,
        quantizer_spacing=spec.admm.spacing,
        error_feedback=spec.admm.error_feedback,
        admm_max_iter=spec.admm.max_iter,
        split=spec.dp.split,
        bias_share=spec.dp.bias_share,
        linear_share=spec.dp.linear_share,
        input_radius=spec.dp.input_radius,
        eigen_floor=spec.dp.eigen_floor,
        noise_floor=spec.dp.noise_floor,
        noise=spec.dp.noise,
        seed=spec.model.seed,
    )


def run_dp_gsmp(spec: JobSpec, ctx: JobContext) -> dict[str, Any]:
    x_train, y_train, x_test, _ = load_job_data(spec.data)
    privacy = spec.privacy
    assert privacy.epsilon is not None and privacy.delta is not None  # JobSpec validates it
    model = regressor_for(spec)
    placement = _RayStatistics() if ctx.distributed else None
    source = placement if placement is not None else local_statistics
    try:
        with ctx.progress(spec.job.name, spec.admm.max_iter) as on_round:
            model.fit(
                x_train,
                y_train,
                epsilon=privacy.epsilon,
                delta=privacy.delta,
                gate=ctx.privacy.gate,
                pool=ctx.privacy.pool,
                requester=ctx.privacy.requester,
                statistics_source=source,
                on_round=on_round,
            )
    finally:
        if placement is not None:
            placement.close()
    return _write_results(model, spec, ctx, x_test)


def _write_results(
    model: DPGSMPRegressor, spec: JobSpec, ctx: JobContext, x_test: np.ndarray | None
) -> dict[str, Any]:
    gate, writer, requester = ctx.privacy.gate, ctx.writer, ctx.privacy.requester
    learned = model.model_release_
    assert learned is not None
    half = (model.target_range[1] - model.target_range[0]) / 2
    components = model.features_.num_components

    def model_record(fitted: Any) -> dict[str, Any]:
        return {
            "weights": model.features_.kernel_weights(fitted.weights).tolist(),
            "noise_variance": fitted.noise_variance * half**2,
            "features_per_component": model.features_.per_component,
            "feature_seed": spec.model.seed,
        }

    record = gate.postprocess(
        model_record, learned, description="DP-GSMP kernel weights", requester=requester
    )
    writer.write("model.json", record)
    if x_test is not None:
        predictions = model.release_predictions(x_test, requester=requester)
        writer.write("predictions.csv", predictions)
    summary_values = {
        "name": spec.job.name,
        "kind": spec.job.kind,
        "agents": spec.admm.agents,
        "epsilon": spec.privacy.epsilon,
        "delta": spec.privacy.delta,
        "feature_dim": model.features_.dim,
        "components": components,
        "release_ledger_ids": [r.ledger_id for r in model.releases_],
        "pools": [pool for r in model.releases_ for pool in r.pools],
        "fit_seconds": model.fit_seconds_,
        "output_dir": str(ctx.output_dir),
        "ledger": str(ctx.privacy.ledger_path),
        "distributed": ctx.distributed,
    }

    def summarise(fitted: Any) -> dict[str, Any]:
        return {
            **summary_values,
            "nonzero_weights": int(torch.count_nonzero(fitted.weights)),
            "noise_variance": fitted.noise_variance * half**2,
            "admm_rounds": 0 if fitted.admm is None else len(fitted.admm.rounds),
        }

    summary = gate.postprocess(
        summarise, learned, description="DP-GSMP fit summary", requester=requester
    )
    writer.write("summary.json", summary)
    return dict(summary.value)


class _RayStatistics:
    """One Ray actor per shard; each computes its shard's statistics where the shard lives."""

    def __init__(self) -> None:
        self.actors: list[Any] = []

    def __call__(
        self, recipe: StatisticsRecipe, shards: list[Shard]
    ) -> list[Callable[[], SufficientStatistics]]:
        import ray

        from gramfed.platform.runtime.actors import ActorResources

        resources = ActorResources.for_cluster(len(shards))
        actor_class = ray.remote(_ShardStatistics).options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus
        )
        self.actors = [
            actor_class.remote(recipe, ray.put((xs.numpy(), ys.numpy()))) for xs, ys in shards
        ]
        return [(lambda actor=actor: ray.get(actor.statistics.remote())) for actor in self.actors]

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


class _ShardStatistics:
    """A shard and the public recipe; ``statistics`` runs on the actor (called once)."""

    def __init__(self, recipe: StatisticsRecipe, shard: tuple[np.ndarray, np.ndarray]) -> None:
        self.recipe = recipe
        self.x, self.y = (torch.tensor(a) for a in shard)

    def statistics(self) -> SufficientStatistics:
        return self.recipe.statistics(self.x, self.y)
