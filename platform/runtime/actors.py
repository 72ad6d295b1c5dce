"""``AgentActor``: one ADMM agent living on a Ray worker, next to its shard.

The coordinator places each shard in the object store (``ray.put``) and hands the actor the
reference; the actor builds its ``ADMMAgent`` on its own device from the same
``AgentRecipe`` the in-process estimator uses, and from then on only frames (bytes) and, for
fault recovery, the agent's small state travel. Ray restarts a killed actor process
(``max_restarts``) but does not replay its tasks (``max_task_retries=0``): a replayed step on a
freshly built agent would start from the wrong state, so ``RayTransport`` restores the state
first and then re-sends the round itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from gramfed.workers.admm import ADMMAgent
from gramfed.workers.estimator import AgentRecipe

MAX_RESTARTS = 4


@dataclass(frozen=True)
class ActorResources:
    """What each agent actor asks the scheduler for."""

    num_cpus: float
    num_gpus: float

    @classmethod
    def for_cluster(cls, agents: int) -> ActorResources:
        """One GPU per agent when the cluster has enough, else an equal share of them; with no
        GPU, an equal share of the CPUs (whole CPUs where there are enough, so each agent's
        torch gets several threads; Ray sets OMP_NUM_THREADS from this)."""
        total = ray.cluster_resources()
        gpus, cpus = float(total.get("GPU", 0.0)), float(total.get("CPU", 1.0))
        if gpus > 0:
            return cls(num_cpus=min(1.0, cpus / agents), num_gpus=min(1.0, gpus / agents))
        share = cpus / agents
        return cls(num_cpus=float(int(share)) if share >= 1 else share, num_gpus=0.0)


@ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=0)
class AgentActor:
    """Agent ``index``: ``setup`` builds it from a shard, ``step`` answers one frame."""

    def __init__(self, index: int, recipe: AgentRecipe) -> None:
        self.index = index
        self.recipe = recipe
        self.agent: ADMMAgent | None = None

    def setup(self, shard: tuple[np.ndarray, np.ndarray]) -> str:
        """Build the agent from its shard (resolved by Ray from the ObjectRef); return its
        device."""
        x, y = shard
        # Object-store arrays are read-only views; the agent gets its own copy.
        self.agent = self.recipe.build(self.index, torch.tensor(x), torch.tensor(y))
        return str(self.agent.problem.gram.device)

    def step(self, frame: bytes) -> bytes:
        return self._agent().step(frame)

    def state(self) -> dict[str, Any]:
        return self._agent().state()

    def restore(self, state: dict[str, Any]) -> None:
        self._agent().restore(state)

    def pid(self) -> int:
        return os.getpid()

    def _agent(self) -> ADMMAgent:
        if self.agent is None:
            raise RuntimeError(f"agent {self.index} has no shard yet; call setup first")
        return self.agent
