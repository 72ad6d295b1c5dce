"""How the ADMM coordinator reaches its agents: bytes out, bytes back, nothing else.

An agent's raw data never crosses this interface; only encoded frames do. The in-process
transport calls agents directly; the Ray and gRPC transports carry the same bytes.
"""

from __future__ import annotations

from typing import Protocol


class AgentEndpoint(Protocol):
    """An agent as the coordinator sees it: one round is one frame in, one reply out."""

    def step(self, frame: bytes) -> bytes: ...


class Transport(Protocol):
    """Delivers one broadcast frame to every agent and returns their replies in order."""

    @property
    def num_agents(self) -> int: ...

    def round(self, frame: bytes) -> list[bytes]: ...


class InProcessTransport:
    """Agents living in this process, called one after another."""

    def __init__(self, agents: list[AgentEndpoint]) -> None:
        if not agents:
            raise ValueError("a transport needs at least one agent")
        self._agents = agents

    @property
    def num_agents(self) -> int:
        return len(self._agents)

    def round(self, frame: bytes) -> list[bytes]:
        return [agent.step(frame) for agent in self._agents]
