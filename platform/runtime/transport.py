"""``RayTransport``: the ADMM ``Transport`` over agent actors, surviving killed workers.

A round sends the frame to every actor at once, then collects each reply together with the
agent's state after the step (asked for in the same call order, so it is the state that
produced the reply). When an actor's process dies mid-round, Ray restarts it empty; this
transport then rebuilds its agent from the shard (the same ObjectRef, or the coordinator's copy
put again if the object store lost it), restores the state it had before the round, and
re-sends the round's frame to that actor alone: the other agents have already stepped. An
agent's step is deterministic given its state and the frame (quantizer generators included),
so the recovered reply is the one the lost process would have sent.

Raw data never crosses this interface after the shards are placed; state snapshots stay
inside the cluster (the coordinator runs on the Ray driver, which is trusted here).
"""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError

from gramfed.platform.runtime.actors import MAX_RESTARTS, ActorResources, AgentActor
from gramfed.workers.estimator import AgentRecipe, Shard

AgentState = dict[str, Any]
_LOST_WORKER = (RayActorError, ActorUnavailableError)


class AgentLost(RuntimeError):
    """An agent's worker kept dying: more restarts than Ray was allowed to make."""


class RayTransport:
    """One ``AgentActor`` per shard; ``round`` broadcasts a frame and gathers the replies.

    ``states`` restores every agent to saved states (resuming a checkpointed run).
    ``recoveries`` counts the agents rebuilt after a lost worker.
    """

    def __init__(
        self,
        recipe: AgentRecipe,
        shards: list[Shard],
        *,
        resources: ActorResources | None = None,
        states: list[AgentState] | None = None,
    ) -> None:
        if not shards:
            raise ValueError("a transport needs at least one agent")
        if states is not None and len(states) != len(shards):
            raise ValueError(f"{len(states)} saved agent states for {len(shards)} agents")
        res = resources or ActorResources.for_cluster(len(shards))
        # The coordinator keeps its copy so a shard lost from the object store can be put again.
        self._shards = [(x.numpy(), y.numpy()) for x, y in shards]
        self._refs = [ray.put(shard) for shard in self._shards]
        self._actors = [
            AgentActor.options(num_cpus=res.num_cpus, num_gpus=res.num_gpus).remote(j, recipe)
            for j in range(len(shards))
        ]
        self.devices: list[str] = ray.get(
            [actor.setup.remote(ref) for actor, ref in zip(self._actors, self._refs, strict=True)]
        )
        if states is not None:
            ray.get([a.restore.remote(s) for a, s in zip(self._actors, states, strict=True)])
            self._states = list(states)
        else:
            self._states = ray.get([actor.state.remote() for actor in self._actors])
        self.recoveries = 0

    @property
    def num_agents(self) -> int:
        return len(self._actors)

    @property
    def states(self) -> list[AgentState]:
        """Every agent's state after the last completed round."""
        return list(self._states)

    def pids(self) -> list[int]:
        """The worker process of each agent (for operators, and for fault tests)."""
        return ray.get([actor.pid.remote() for actor in self._actors])

    def round(self, frame: bytes) -> list[bytes]:
        calls = [(a.step.remote(frame), a.state.remote()) for a in self._actors]
        replies: list[bytes] = []
        states: list[AgentState] = []
        for j, (step, state) in enumerate(calls):
            try:
                reply, after = ray.get([step, state])
            except _LOST_WORKER:
                reply, after = self._recover(j, frame)
            replies.append(reply)
            states.append(after)
        self._states = states
        return replies

    def close(self) -> None:
        for actor in self._actors:
            ray.kill(actor, no_restart=True)

    def _recover(self, j: int, frame: bytes) -> tuple[bytes, AgentState]:
        """Rebuild agent ``j`` on its restarted worker, restore it, and replay ``frame``."""
        actor = self._actors[j]
        for _ in range(MAX_RESTARTS + 1):
            try:
                try:
                    ray.get(actor.setup.remote(self._refs[j]))
                except ObjectLostError:
                    self._refs[j] = ray.put(self._shards[j])
                    ray.get(actor.setup.remote(self._refs[j]))
                actor.restore.remote(self._states[j])
                reply, after = ray.get([actor.step.remote(frame), actor.state.remote()])
            except _LOST_WORKER:
                continue
            self.recoveries += 1
            return reply, after
        raise AgentLost(f"agent {j}'s worker died more than {MAX_RESTARTS} times; giving up")
