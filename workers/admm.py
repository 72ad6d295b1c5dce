"""Consensus ADMM over J agents for the GSMP weights, with quantized byte messages.

Agent j holds its shard and solves, by DSCA (``gramfed.workers.sca``)::

    zeta_j = argmin_{a >= 0}  F_j(a) + lam_j'(a - theta) + rho/2 |a - theta|^2

then sends ``Q(zeta_j)``. The coordinator forms ``theta = max(0, mean_j(Q(zeta_j) + lam_j/rho))``
(the global step carries the constraint too, so the consensus kernel is always PSD; the
result is this average itself, not its quantized broadcast),
quantizes it and broadcasts it with rho; each agent then updates its own dual
``lam_j += rho (Q(zeta_j) - theta)``, which the coordinator mirrors from the same bytes, so
duals never travel. Quantized messages are updates (``quantize.encode_update``): each carries
its vector's change from the sender's previous message, whose reconstruction both ends hold,
so the quantization error shrinks as the rounds settle and the zero weights stay exactly zero.
Stopping rules and residual balancing follow the SLIM-KL reference:
primal residual ``|Z - theta 1'|_F``, dual residual ``|rho (theta - theta_old)|_F``,
tolerances ``sqrt(A J) tol_abs + tol_rel max(|Z|_F, |theta|_F)`` and
``sqrt(A J) tol_abs + tol_rel |rho Lam|_F``; rho is multiplied by ``nu`` when the primal
residual exceeds ``mu`` times the dual one and divided by it when the dual one is larger.

Fault tolerance without changing the arithmetic: an agent's whole state (``ADMMAgent.state``)
and the coordinator's state between rounds (``ADMMState``) are plain values, including the
quantizers' random-generator states, so a run restored from round t continues exactly as
the uninterrupted run would.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gramfed.workers.quantize import (
    ExactCodec,
    Spacing,
    StochasticQuantizer,
    VectorCodec,
    decode_update,
    message_bits,
)
from gramfed.workers.sca import ConsensusPenalty, LocalProblem
from gramfed.workers.transport import Transport

_FRAME = struct.Struct("<IBdd")  # round, flags, rho used for the dual update, rho for this round
_FINAL = 1


@dataclass(frozen=True)
class ADMMOptions:
    max_iter: int = 100
    rho0: float = 1e-10
    tol_abs: float = 1e-3
    tol_rel: float = 1e-3
    mu: float = 10.0
    nu: float = 2.0
    residual_balancing: bool = True
    bits: int | None = None
    step: float | None = None
    spacing: Spacing = "log"
    error_feedback: bool = False
    seed: int = 0

    def codec(self, stream: int) -> VectorCodec:
        if self.bits is None and self.step is None:
            return ExactCodec()
        return StochasticQuantizer(
            bits=self.bits, step=self.step, seed=self.seed * 7919 + stream, spacing=self.spacing
        )


@dataclass
class RoundRecord:
    round: int
    rho: float
    primal_residual: float
    dual_residual: float
    primal_tolerance: float
    dual_tolerance: float
    bits_sent: int


@dataclass
class ADMMResult:
    weights: Tensor
    rounds: list[RoundRecord] = field(default_factory=list)
    converged: bool = False

    @property
    def bits_sent(self) -> int:
        return sum(r.bits_sent for r in self.rounds)


@dataclass
class ADMMState:
    """The coordinator between rounds: everything round ``round + 1`` needs, and the history.

    ``theta`` is the next frame's message, an update from ``held``, the consensus the agents
    hold; ``received`` (J, A) is what the coordinator holds of each agent's last message (the
    reference its next one updates). ``codec_state`` is the coordinator quantizer's generator
    state (None for exact messages).
    """

    round: int
    theta: bytes
    held: Tensor
    received: Tensor
    lam: Tensor
    rho: float
    rho_dual: float
    rounds: list[RoundRecord]
    converged: bool
    codec_state: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready copy (bytes as hex, tensors as nested lists of floats)."""
        return {
            "round": self.round,
            "theta": self.theta.hex(),
            "held": self.held.tolist(),
            "received": self.received.tolist(),
            "lam": self.lam.tolist(),
            "rho": self.rho,
            "rho_dual": self.rho_dual,
            "rounds": [asdict(r) for r in self.rounds],
            "converged": self.converged,
            "codec_state": self.codec_state,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ADMMState:
        return cls(
            round=int(data["round"]),
            theta=bytes.fromhex(data["theta"]),
            held=torch.tensor(data["held"], dtype=torch.float64),
            received=torch.tensor(data["received"], dtype=torch.float64),
            lam=torch.tensor(data["lam"], dtype=torch.float64),
            rho=float(data["rho"]),
            rho_dual=float(data["rho_dual"]),
            rounds=[RoundRecord(**r) for r in data["rounds"]],
            converged=bool(data["converged"]),
            codec_state=data["codec_state"],
        )


def codec_state(codec: VectorCodec) -> dict[str, Any] | None:
    """The random-generator state of a stochastic quantizer (None for deterministic codecs)."""
    rng = getattr(codec, "_rng", None)
    return None if rng is None else rng.bit_generator.state


def restore_codec(codec: VectorCodec, state: dict[str, Any] | None) -> None:
    rng = getattr(codec, "_rng", None)
    if (rng is None) != (state is None):
        raise ValueError("the saved quantizer state does not match this run's quantizer")
    if rng is not None:
        rng.bit_generator.state = state


def encode_frame(
    round_: int, rho_dual: float, rho: float, theta: bytes, final: bool = False
) -> bytes:
    return _FRAME.pack(round_, _FINAL if final else 0, rho_dual, rho) + theta


def decode_frame(frame: bytes) -> tuple[int, bool, float, float, bytes]:
    if len(frame) < _FRAME.size:
        raise ValueError(f"ADMM frame too short: {len(frame)} bytes")
    round_, flags, rho_dual, rho = _FRAME.unpack_from(frame)
    return round_, bool(flags & _FINAL), rho_dual, rho, frame[_FRAME.size :]


class ADMMAgent:
    """One agent: its shard's local problem, its dual variable and its last message."""

    def __init__(self, problem: LocalProblem, options: ADMMOptions, index: int = 0) -> None:
        self.problem = problem
        self.options = options
        self.codec = options.codec(stream=1 + index)
        size, device = problem.size, problem.gram.device
        self.zeta = torch.zeros(size, dtype=torch.float64, device=device)
        self.sent = torch.zeros_like(self.zeta)
        self.lam = torch.zeros_like(self.zeta)
        self.residual = torch.zeros_like(self.zeta)
        self.theta = torch.zeros_like(self.zeta)  # the consensus as last received
        self.local_objective: list[float] = []

    def step(self, frame: bytes) -> bytes:
        round_, final, rho_dual, rho, theta_bytes = decode_frame(frame)
        theta = decode_update(theta_bytes, self.theta).to(self.zeta)
        self.theta = theta
        if round_ == 1:
            self.zeta = theta.clone()  # every agent starts from the broadcast starting point
        if rho_dual > 0:
            self.lam += rho_dual * (self.sent - theta)
        if final:
            return b""
        penalty = ConsensusPenalty(lam=self.lam, theta=theta, rho=rho)
        # lam'(a - theta) differs from lam'a by a constant: same minimiser.
        result = self.problem.solve(self.zeta, penalty)
        self.zeta = result.weights
        self.local_objective.append(result.objective_history[-1])
        outgoing = self.zeta + self.residual if self.options.error_feedback else self.zeta
        message = self.codec.encode_update(outgoing, self.sent)
        self.sent = decode_update(message, self.sent).to(self.zeta)
        if self.options.error_feedback:
            self.residual = outgoing - self.sent
        return message

    def state(self) -> dict[str, Any]:
        """Everything the agent carries between rounds, as numpy arrays and plain values.

        Together with the agent's shard this reproduces the agent exactly (``restore``).
        """
        return {
            "zeta": self.zeta.cpu().numpy(),
            "sent": self.sent.cpu().numpy(),
            "lam": self.lam.cpu().numpy(),
            "residual": self.residual.cpu().numpy(),
            "theta": self.theta.cpu().numpy(),
            "local_objective": list(self.local_objective),
            "codec_state": codec_state(self.codec),
        }

    def restore(self, state: dict[str, Any]) -> None:
        for name in ("zeta", "sent", "lam", "residual", "theta"):
            value = torch.from_numpy(np.array(state[name], dtype=np.float64))
            if value.shape != self.zeta.shape:
                raise ValueError(f"agent state {name!r} has shape {tuple(value.shape)}")
            setattr(self, name, value.to(self.zeta.device))
        self.local_objective = list(state["local_objective"])
        restore_codec(self.codec, state["codec_state"])


RoundHook = Callable[[RoundRecord], None]
CheckpointHook = Callable[[ADMMState], None]


class ConsensusADMM:
    """The coordinator: averages agents' messages, balances rho, decides when to stop."""

    def __init__(
        self,
        transport: Transport,
        num_components: int,
        options: ADMMOptions,
        start: Tensor | None = None,
    ) -> None:
        self.transport = transport
        self.size = num_components
        self.options = options
        self.codec = options.codec(stream=0)
        self.start = (
            torch.zeros(num_components, dtype=torch.float64)
            if start is None
            else start.to(torch.float64).cpu()
        )
        if self.start.shape != (num_components,) or bool((self.start < 0).any()):
            raise ValueError(f"the starting point must be {num_components} non-negative weights")

    def initial_state(self) -> ADMMState:
        held = torch.zeros(self.size, dtype=torch.float64)
        agents = self.transport.num_agents
        return ADMMState(
            round=0,
            theta=self.codec.encode_update(self.start, held),
            held=held,
            received=torch.zeros(agents, self.size, dtype=torch.float64),
            lam=torch.zeros(agents, self.size, dtype=torch.float64),
            rho=self.options.rho0,
            rho_dual=0.0,
            rounds=[],
            converged=False,
            codec_state=codec_state(self.codec),
        )

    def run(
        self,
        on_round: RoundHook | None = None,
        *,
        checkpoint: CheckpointHook | None = None,
        resume_from: ADMMState | None = None,
    ) -> ADMMResult:
        """Run rounds until convergence or ``max_iter``.

        ``checkpoint`` receives the state after every round (after rho balancing, so it is
        exactly what the next round starts from). ``resume_from`` continues from such a state;
        the agents must have been restored to the same round by the caller.
        """
        opts, agents = self.options, self.transport.num_agents
        state = self.initial_state() if resume_from is None else resume_from
        if state.lam.shape != (agents, self.size) or state.received.shape != state.lam.shape:
            raise ValueError(
                f"the saved state is for {tuple(state.lam.shape)} duals, this run has"
                f" {agents} agents and {self.size} weights"
            )
        restore_codec(self.codec, state.codec_state)
        lam, theta_bytes, rho, rho_dual = state.lam.clone(), state.theta, state.rho, state.rho_dual
        theta, received = decode_update(theta_bytes, state.held), state.received.clone()
        result = ADMMResult(
            weights=theta.clamp_min(0.0),
            rounds=[replace(r) for r in state.rounds],
            converged=state.converged,
        )
        scale = math.sqrt(self.size * agents)
        for t in range(state.round + 1, opts.max_iter + 1):
            if result.converged:
                break
            frame = encode_frame(t, rho_dual, rho, theta_bytes)
            replies = self.transport.round(frame)
            bits = agents * message_bits(frame) + sum(message_bits(r) for r in replies)
            zeta = torch.stack(
                [decode_update(r, held) for r, held in zip(replies, received, strict=True)]
            )
            received = zeta
            theta_old = theta
            average = (zeta.mean(0) + lam.mean(0) / rho).clamp_min(0.0)
            theta_bytes = self.codec.encode_update(average, theta_old)
            theta = decode_update(theta_bytes, theta_old)
            lam += rho * (zeta - theta)
            record = RoundRecord(
                round=t,
                rho=rho,
                primal_residual=float(torch.linalg.norm(zeta - theta)),
                dual_residual=float(rho * torch.linalg.norm(theta - theta_old)),
                primal_tolerance=scale * opts.tol_abs
                + opts.tol_rel
                * max(float(torch.linalg.norm(zeta)), float(torch.linalg.norm(theta))),
                dual_tolerance=scale * opts.tol_abs
                + opts.tol_rel * float(torch.linalg.norm(rho * lam)),
                bits_sent=bits,
            )
            result.rounds.append(record)
            # The weights are the exact average, not its quantized broadcast: an update's
            # reconstruction can dip below zero by a grid step, and a kernel weight must not.
            result.weights = average
            if on_round is not None:
                on_round(record)
            rho_dual = rho
            if t > 1 and (
                record.primal_residual < record.primal_tolerance
                and record.dual_residual < record.dual_tolerance
            ):
                result.converged = True
            elif opts.residual_balancing:
                if record.primal_residual > opts.mu * record.dual_residual:
                    rho *= opts.nu
                elif record.dual_residual > record.primal_residual:
                    rho /= opts.nu
            if checkpoint is not None:
                checkpoint(
                    ADMMState(
                        round=t,
                        theta=theta_bytes,
                        held=theta_old.clone(),
                        received=received.clone(),
                        lam=lam.clone(),
                        rho=rho,
                        rho_dual=rho_dual,
                        rounds=[replace(r) for r in result.rounds],
                        converged=result.converged,
                        codec_state=codec_state(self.codec),
                    )
                )
        # Final frame lets agents apply the last dual update (and, remotely, shut down).
        final = encode_frame(len(result.rounds) + 1, rho_dual, rho, theta_bytes, final=True)
        self.transport.round(final)
        result.rounds[-1].bits_sent += agents * message_bits(final)
        return result
