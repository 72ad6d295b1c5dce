"""The coordinator: a gRPC server over mutual TLS that runs secure-aggregation rounds.

Security properties, and where they are enforced:

* **Identity** is the common name of the client certificate in the TLS session
  (``context.auth_context()``), checked against the PKI allowlist on every call (revocation
  without restart). No request field names its sender. Plaintext serving exists for development
  only, needs ``plaintext = true`` and a loopback address, and then names peers by address.
* **Replay**: every request carries a fresh nonce, remembered per (peer, job, round); a repeat is
  refused with ALREADY_EXISTS. Results for another job, round or stage than the current one are
  refused with FAILED_PRECONDITION.
* **Limits**: gRPC message limits on both ends, a bound on a reassembled result, and a deadline
  required on every call. Requests are parsed here, not by gRPC, so a malformed one gets
  INVALID_ARGUMENT. The standard health service runs beside; there is no reflection service.

Rounds (one job after another, ``gramfed.platform.federation.jobs``): OFFER to the live
participants, then ADVERTISE, SHARE, INPUT, UNMASK over the roster of those who accepted, each
stage with a deadline. A participant lost before INPUT restarts the round with the others
(nothing has been released yet); one lost during INPUT is a dropout that secure aggregation
removes, as long as ``threshold`` inputs arrived. The coordinator only ever holds the sum.

Checkpoints: a finished job's result is written to ``STATE_DIR/JOB.json`` before the next job
starts, and every round number is recorded in ``STATE_DIR/rounds.json`` before it is used. A
restarted coordinator skips the jobs that are done and numbers its rounds after every round it
ever opened, so requests captured before the restart cannot be replayed into a new round. A round
cut short by the restart is not resumed: the participants' masks and keys were for that round
only. Its inputs, if any were sent, were charged by the participants' gates; the next round
asks them for a fresh release (their gates price it again, or refuse it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from gramfed.platform.federation import pki, tasks, wire
from gramfed.platform.federation.jobs import FederatedJob, LoadedJob
from gramfed.platform.federation.secagg import Aggregator, RoundSpec, SecAggError
from gramfed.platform.specfile import load_toml_model
from gramfed.protos import federation_pb2 as pb

Stage = pb.Task.Stage
_NONCES_PER_PEER = 4096  # job-less requests (pull, heartbeat) remember this many nonces


class TLSSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert: Path
    key: Path
    ca: Path
    allowlist: Path


class RoundsSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quorum: PositiveInt = Field(2, description="participants needed to start a round")
    participants: PositiveInt | None = Field(None, description="start at once when this many")
    gather_seconds: PositiveFloat = 30.0
    stage_seconds: PositiveFloat = 30.0
    heartbeat_seconds: PositiveFloat = 5.0
    attempts: PositiveInt = 3


class CoordinatorConfig(BaseModel):
    """``gramfed coordinator serve --config FILE``."""

    model_config = ConfigDict(extra="forbid")

    listen: str = "127.0.0.1:50051"
    plaintext: bool = False
    tls: TLSSection | None = None
    state_dir: Path
    linger_seconds: float = Field(3.0, ge=0)
    rounds: RoundsSection = RoundsSection()
    jobs: list[FederatedJob] = Field(min_length=1)


def load_config(path: Path) -> CoordinatorConfig:
    config = load_toml_model(path, CoordinatorConfig)
    base = path.parent
    config.state_dir = base / config.state_dir
    for job in config.jobs:
        job.spec = base / job.spec
    if config.tls is not None:
        for name in ("cert", "key", "ca", "allowlist"):
            setattr(config.tls, name, base / getattr(config.tls, name))
    return config


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- round state


@dataclass
class _Round:
    job: LoadedJob
    number: int
    stage: int = Stage.OFFER
    deadline: float = 0.0
    offered: tuple[str, ...] = ()
    answers: dict[str, pb.Acceptance] = field(default_factory=dict)
    spec: RoundSpec | None = None
    adverts: dict[str, pb.Advert] = field(default_factory=dict)
    shares: dict[str, list[pb.SealedShare]] = field(default_factory=dict)
    aggregator: Aggregator | None = None
    reveals: dict[str, pb.Reveal] = field(default_factory=dict)
    inputs: dict[str, pb.MaskedVector] = field(default_factory=dict)

    @property
    def members(self) -> tuple[str, ...]:
        return self.spec.roster if self.spec else self.offered

    @property
    def expected(self) -> tuple[str, ...]:
        """Who must answer the current stage: at UNMASK, only those whose input arrived."""
        if self.stage == Stage.UNMASK and self.aggregator is not None:
            return self.aggregator.survivors
        return self.members

    def done_by(self, peer: str) -> bool:
        """Has ``peer`` already answered the current stage?"""
        store: dict[str, Any] = {
            Stage.OFFER: self.answers,
            Stage.ADVERTISE: self.adverts,
            Stage.SHARE: self.shares,
            Stage.INPUT: dict.fromkeys(self.aggregator.survivors) if self.aggregator else {},
            Stage.UNMASK: self.reveals,
        }[self.stage]
        return peer in store


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Coordinator:
    """Serves gramfed.v1 and runs the configured jobs; ``serve()`` blocks until they are done."""

    def __init__(self, config: CoordinatorConfig, *, log: Callable[[str], None] = print) -> None:
        if config.plaintext:
            if not is_loopback(config.listen):
                raise ValueError(
                    f"plaintext serving is allowed on loopback only, not on {config.listen}"
                )
        elif config.tls is None:
            raise ValueError("a [tls] section (cert, key, ca, allowlist) is required")
        self.config = config
        self._log = log
        self.jobs = [job.load() for job in config.jobs]
        if len({job.name for job in self.jobs}) != len(self.jobs):
            raise ValueError("every federated job needs its own name")
        self._lock = threading.Condition()
        self._seen: dict[tuple[str, str, int], set[bytes]] = {}
        self._recent: dict[str, list[bytes]] = {}
        self._alive: dict[str, float] = {}
        self._round: _Round | None = None
        self._finished = False
        self.results: dict[str, dict[str, Any]] = {}
        self._allowlist = pki.Allowlist(config.tls.allowlist) if config.tls else None
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32), options=wire.channel_options()
        )
        self._server.add_generic_rpc_handlers((self._handlers(),))
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if config.plaintext:
            self.port = self._server.add_insecure_port(config.listen)
        else:
            tls = pki.Credentials.load(config.tls.cert, config.tls.key, config.tls.ca)
            credentials = grpc.ssl_server_credentials(
                [(tls.private_key, tls.certificate)],
                root_certificates=tls.ca,
                require_client_auth=True,
            )
            self.port = self._server.add_secure_port(config.listen, credentials)
        if self.port == 0:
            raise ValueError(f"cannot listen on {config.listen}")

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        return f"{self.config.listen.rsplit(':', 1)[0]}:{self.port}"

    def start(self) -> None:
        self._server.start()
        self._health.set(wire.SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        (self.config.state_dir / "listening").write_text(self.address + "\n")
        self._log(
            f"listening on {self.address} ({'plaintext' if self.config.plaintext else 'mTLS'})"
        )

    def stop(self) -> None:
        self._health.enter_graceful_shutdown()
        self._server.stop(grace=1).wait()

    def serve(self) -> dict[str, dict[str, Any]]:
        """Run every job, let participants see that all is done, then stop."""
        self.start()
        try:
            for job in self.jobs:
                self.results[job.name] = self._checkpoint(job) or self._run_job(job)
            with self._lock:
                self._finished = True
            time.sleep(self.config.linger_seconds)
        finally:
            self.stop()
        return self.results

    # ------------------------------------------------------------------ rounds

    def _checkpoint(self, job: LoadedJob) -> dict[str, Any] | None:
        """The result of a job a previous run of this coordinator finished, if any."""
        path = self.config.state_dir / f"{job.name}.json"
        try:
            outcome = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if outcome.get("status") != "done":
            return None
        self._log(f"job {job.name}: done in an earlier run ({path})")
        return outcome

    def _run_job(self, job: LoadedJob) -> dict[str, Any]:
        outcome: dict[str, Any] = {}
        for _ in range(self.config.rounds.attempts):
            outcome = self._run_round(job, self._next_round(job.name))
            if outcome["status"] != "restart":
                break
        path = self.config.state_dir / f"{job.name}.json"
        _write_atomic(path, json.dumps(outcome, indent=1) + "\n")
        self._log(f"job {job.name}: {outcome['status']} -> {path}")
        return outcome

    def _next_round(self, name: str) -> int:
        """A round number never used for this job, recorded before it is used."""
        path = self.config.state_dir / "rounds.json"
        try:
            used = json.loads(path.read_text())
        except (OSError, ValueError):
            used = {}
        number = int(used.get(name, 0)) + 1
        used[name] = number
        _write_atomic(path, json.dumps(used, indent=1) + "\n")
        return number

    def _run_round(self, job: LoadedJob, number: int) -> dict[str, Any]:
        description = job.description
        rounds = self.config.rounds
        live = self._gather(rounds)
        if len(live) < rounds.quorum:
            return _outcome(job, number, "failed", f"{len(live)} live participants < quorum")
        state = _Round(job, number, offered=tuple(sorted(live)))
        self._advance(state, Stage.OFFER)
        self._wait_all(state)
        accepted = sorted(p for p, a in state.answers.items() if a.accepted)
        refusals = {p: a.reason for p, a in state.answers.items() if not a.accepted}
        if len(accepted) < max(rounds.quorum, job.entry.threshold, 2):
            return _outcome(job, number, "failed", "too few participants accepted", refusals)
        threshold = max(job.entry.threshold, len(accepted) // 2 + 1)
        state.spec = RoundSpec(
            job.name,
            number,
            tuple(accepted),
            threshold,
            tasks.rules(description).dim,
            tasks.bits(description, len(accepted)),
        )
        for stage in (Stage.ADVERTISE, Stage.SHARE):
            self._advance(state, stage)
            if missing := self._wait_all(state):
                return _outcome(job, number, "restart", f"lost {missing} before input")
            if stage == Stage.ADVERTISE:
                adverts = {p: wire.advert_from_pb(a) for p, a in state.adverts.items()}
                state.aggregator = Aggregator(state.spec, adverts)
        self._advance(state, Stage.INPUT)
        dropped = self._wait_all(state)
        survivors = state.aggregator.survivors
        if len(survivors) < threshold:
            return _outcome(job, number, "failed", f"{len(survivors)} inputs < threshold")
        self._advance(state, Stage.UNMASK)
        self._wait_all(state)
        try:
            reveals = {p: wire.reveal_from_pb(p, r) for p, r in state.reveals.items()}
            total = state.aggregator.unmask(reveals)
        except (SecAggError, wire.WireError) as exc:
            return _outcome(job, number, "failed", str(exc))
        try:
            finished = job.finish(total, list(survivors), state.inputs, self.config.state_dir)
        except ValueError as exc:
            return _outcome(job, number, "failed", f"the sum could not be used: {exc}")
        mechanism = tasks.rules(description).mechanism
        result = _outcome(job, number, "done", "", refusals)
        result.update(
            survivors=list(survivors),
            dropped=list(dropped),
            sum=total.tolist(),
            noise_sigma2_each=str(mechanism.sigma2_each),
            noise_shares=len(survivors),
            rho_per_participant=str(mechanism.privacy_map().rho),
            ring_bits=state.spec.bits,
            **finished,
        )
        with self._lock:
            self._round = None
        return result

    def _gather(self, rounds: RoundsSection) -> list[str]:
        """Wait for ``participants`` live participants (or the quorum) for ``gather_seconds``."""
        start = time.monotonic()
        want = rounds.participants or rounds.quorum
        with self._lock:
            while True:
                live = self._live()
                if len(live) >= want or time.monotonic() - start > rounds.gather_seconds:
                    return live
                self._lock.wait(0.2)

    def _live(self) -> list[str]:
        horizon = time.monotonic() - 3 * self.config.rounds.heartbeat_seconds
        return [p for p, seen in self._alive.items() if seen >= horizon]

    def _advance(self, state: _Round, stage: int) -> None:
        with self._lock:
            state.stage = stage
            state.deadline = time.time() + self.config.rounds.stage_seconds
            self._round = state
            self._lock.notify_all()
        self._log(f"job {state.job.name} round {state.number}: {Stage.Name(stage)}")

    def _wait_all(self, state: _Round) -> list[str]:
        """Wait until every member answered the stage or its deadline; return the missing."""
        with self._lock:
            while True:
                missing = [p for p in state.expected if not state.done_by(p)]
                left = state.deadline - time.time()
                if not missing or left <= 0:
                    return missing
                self._lock.wait(min(left, 0.5))

    # ------------------------------------------------------------------ RPC handlers

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable[[bytes, grpc.ServicerContext], bytes]) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(self._guard(fn))

        return grpc.method_handlers_generic_handler(
            wire.SERVICE,
            {
                "Register": unary(self._register),
                "Heartbeat": unary(self._heartbeat),
                "PullTask": unary(self._pull),
                "SubmitResult": grpc.stream_unary_rpc_method_handler(self._guard(self._submit)),
            },
        )

    def _guard(self, fn: Callable[[Any, str], bytes]) -> Callable[[Any, Any], bytes]:
        """Authenticate, require a deadline, and turn refusals into clear status codes."""

        def handler(request: Any, context: grpc.ServicerContext) -> bytes:
            try:
                left = context.time_remaining()  # huge when the client set no deadline
                if left is None or left > wire.MAX_DEADLINE_SECONDS:
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"every call needs a deadline of at most {wire.MAX_DEADLINE_SECONDS} s",
                    )
                return fn(request, self._identify(context))
            except _Abort as exc:
                context.abort(exc.code, str(exc))
            except wire.WireError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable: context.abort raises")

        return handler

    def _identify(self, context: grpc.ServicerContext) -> str:
        if self._allowlist is None:
            return context.peer()  # plaintext on loopback: development only
        certs = context.auth_context().get("x509_pem_cert")
        if not certs:
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        try:
            name, serial = pki.identity(certs[0])
        except (ValueError, pki.PKIError) as exc:
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, f"unreadable certificate: {exc}") from exc
        if not self._allowlist.allows(name, serial):
            raise _Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate {name!r} (serial {serial}) is revoked or not allowlisted",
            )
        return name

    def _check_binding(self, peer: str, binding: pb.Binding) -> None:
        if len(binding.nonce) != wire.NONCE_BYTES:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "a request needs a 16-byte nonce")
        with self._lock:
            if binding.job_id:
                seen = self._seen.setdefault((peer, binding.job_id, binding.round), set())
                if binding.nonce in seen:
                    raise _Abort(grpc.StatusCode.ALREADY_EXISTS, "replayed request (nonce seen)")
                seen.add(binding.nonce)
            else:
                recent = self._recent.setdefault(peer, [])
                if binding.nonce in recent:
                    raise _Abort(grpc.StatusCode.ALREADY_EXISTS, "replayed request (nonce seen)")
                recent.append(binding.nonce)
                del recent[:-_NONCES_PER_PEER]
            self._alive[peer] = time.monotonic()
            self._lock.notify_all()

    def _register(self, raw: bytes, peer: str) -> bytes:
        request = _parse(pb.RegisterRequest, raw)
        self._check_binding(peer, request.binding)
        self._log(f"registered {peer}")
        return pb.RegisterReply(
            participant=peer, heartbeat_seconds=self.config.rounds.heartbeat_seconds
        ).SerializeToString()

    def _heartbeat(self, raw: bytes, peer: str) -> bytes:
        self._check_binding(peer, _parse(pb.HeartbeatRequest, raw).binding)
        return pb.HeartbeatReply(server_time=time.time()).SerializeToString()

    def _pull(self, raw: bytes, peer: str) -> bytes:
        self._check_binding(peer, _parse(pb.PullRequest, raw).binding)
        with self._lock:
            return self._task_for(peer).SerializeToString()

    def _task_for(self, peer: str) -> pb.Task:
        state = self._round
        if self._finished:
            return pb.Task(stage=Stage.DONE)
        wait = pb.Task(stage=Stage.WAIT, retry_after=0.2)
        if state is None or peer not in state.expected or state.done_by(peer):
            return wait
        task = pb.Task(
            stage=state.stage,
            job_id=state.job.name,
            round=state.number,
            deadline=state.deadline,
            job=state.job.description,
        )
        if state.spec is not None:
            task.secagg.CopyFrom(wire.secagg_message(state.spec))
        if state.stage == Stage.SHARE:
            task.adverts.extend(state.adverts.values())
        elif state.stage == Stage.INPUT:
            task.shares.extend(
                s for boxes in state.shares.values() for s in boxes if s.recipient == peer
            )
        elif state.stage == Stage.UNMASK:
            task.survivors.extend(state.aggregator.survivors)
        return task

    def _submit(self, stream: Iterator[bytes], peer: str) -> bytes:
        first, result = wire.reassemble(_parse(pb.ResultChunk, raw) for raw in stream)
        self._check_binding(peer, first.binding)
        with self._lock:
            state = self._round
            if (
                state is None
                or (first.binding.job_id, first.binding.round, first.stage)
                != (state.job.name, state.number, state.stage)
                or peer not in state.expected
            ):
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "no such open stage for you")
            if state.done_by(peer):
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS, "this stage was already answered")
            self._accept(state, peer, result)
            self._lock.notify_all()
        return pb.SubmitReply(accepted=True).SerializeToString()

    def _accept(self, state: _Round, peer: str, result: pb.Result) -> None:
        expected = {
            Stage.OFFER: "acceptance",
            Stage.ADVERTISE: "advert",
            Stage.SHARE: "shares",
            Stage.INPUT: "masked",
            Stage.UNMASK: "reveal",
        }[state.stage]
        if result.WhichOneof("body") != expected:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"this stage takes a {expected}")
        if state.stage == Stage.OFFER:
            state.answers[peer] = result.acceptance
        elif state.stage == Stage.ADVERTISE:
            if result.advert.participant != peer:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "an advert names its sender")
            wire.advert_from_pb(result.advert)
            state.adverts[peer] = result.advert
        elif state.stage == Stage.SHARE:
            boxes = list(result.shares.shares)
            if sorted(b.recipient for b in boxes) != list(state.spec.roster) or any(
                b.sender != peer for b in boxes
            ):
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "one share per roster member")
            state.shares[peer] = boxes
        elif state.stage == Stage.INPUT:
            spec = state.spec
            if result.masked.bits != spec.bits:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"the ring has {spec.bits} bits")
            state.aggregator.add(peer, wire.unpack_ring(result.masked.values, spec.bits, spec.dim))
            state.inputs[peer] = result.masked
        else:
            state.reveals[peer] = result.reveal


def _parse(message: type, raw: bytes) -> Any:
    try:
        return message.FromString(raw)
    except Exception as exc:  # protobuf raises DecodeError, and others on some inputs
        raise wire.WireError(f"malformed {message.__name__}: {type(exc).__name__}") from None


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` whole: a coordinator killed mid-write leaves the old file or the new."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _outcome(
    job: LoadedJob,
    number: int,
    status: str,
    reason: str,
    refusals: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "job": job.name,
        "kind": job.kind,
        "round": number,
        "status": status,
        "reason": reason,
        "refusals": refusals or {},
    }
