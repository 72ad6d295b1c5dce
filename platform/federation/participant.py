"""A federated participant: pulls tasks, decides under its own policy, releases through its gate.

The participant opens no port. It owns its budget pool, its signed ledger and therefore its
audit report (``gramfed audit report --ledger ...``); the coordinator cannot override any of
these decisions, because they are taken here:

* a task whose charge exceeds the pool's remaining budget is refused (the refusal is recorded
  in the ledger by the gate, nothing is computed or sent);
* an exact (non-DP) release is refused unless the policy trusts this coordinator;
* a round with fewer noise shares than the policy's ``min_noise_shares`` is refused, because
  the distributed noise guarantee rests on them;
* the only vector that leaves is a ``Release`` made by the gate, then masked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import grpc
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from gramfed.platform.federation import pki, tasks, wire
from gramfed.platform.federation.coordinator import is_loopback
from gramfed.platform.federation.secagg import Client, SecAggError
from gramfed.platform.sketchspec import Points
from gramfed.platform.specfile import load_toml_model
from gramfed.privacy.budget import ApproxDP, PoolSpec
from gramfed.privacy.errors import PrivacyError
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger
from gramfed.privacy.release import require_release
from gramfed.protos import federation_pb2 as pb
from gramfed.protos import federation_pb2_grpc as pb_grpc

Stage = pb.Task.Stage
# Fault injection for the loopback tests: the process kills itself on receiving this stage.
KILL_AT_ENV = "GRAMFED_TESTING_KILL_AT"
ABANDONED_POLL_SECONDS = 0.5


class Policy(BaseModel):
    """``policy.toml``: what this participant allows, whatever the coordinator asks."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, description="pool name of this participant's data")
    ledger: Path
    key: Path
    budget_epsilon: PositiveFloat
    budget_delta: float = Field(1e-6, gt=0, lt=1)
    trusted_coordinators: list[str] = Field(
        default_factory=list, description="addresses allowed exact (non-DP) releases"
    )
    min_noise_shares: int = Field(2, ge=1)


def load_policy(path: Path) -> Policy:
    policy = load_toml_model(path, Policy)
    policy.ledger = path.parent / policy.ledger
    policy.key = path.parent / policy.key
    return policy


class Participant:
    """Joins one coordinator and serves its tasks until it says everything is done."""

    def __init__(
        self,
        address: str,
        policy: Policy,
        data: Points,
        credentials: pki.Credentials | None,
        *,
        plaintext: bool = False,
        give_up_seconds: float = 60.0,
        log: Callable[[str], None] = print,
    ) -> None:
        if credentials is None and not (plaintext and is_loopback(address)):
            raise ValueError("plaintext is allowed only with --plaintext and a loopback address")
        self.address = address
        self.policy = policy
        self.data = data
        self.give_up_seconds = give_up_seconds
        self._log = log
        self.recipient = f"coordinator {address}"
        self.ledger = Ledger(policy.ledger, policy.key, create=not policy.ledger.exists())
        self.gate = Gate(self.ledger)
        trusted = (self.recipient,) if address in policy.trusted_coordinators else ()
        self.pool = self.gate.create_pool(
            PoolSpec.of(
                policy.dataset,
                ApproxDP(policy.budget_epsilon, policy.budget_delta),
                trusted_recipients=trusted,
            )
        )
        options = wire.channel_options()
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            tls = grpc.ssl_channel_credentials(
                credentials.ca, credentials.private_key, credentials.certificate
            )
            self._channel = grpc.secure_channel(address, tls, options=options)
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        self._clients: dict[tuple[str, int], Client] = {}
        self._abandoned: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self.name = ""
        self.completed: list[str] = []

    # ------------------------------------------------------------------ main loop

    def run(self) -> list[str]:
        """Register, then pull and answer tasks until DONE; returns the jobs taken part in."""
        reply = self._call(self._stub.Register, pb.RegisterRequest(binding=wire.binding()))
        self.name = reply.participant
        self._log(f"joined {self.address} as {self.name}")
        beat = threading.Thread(target=self._beat, args=(reply.heartbeat_seconds,), daemon=True)
        beat.start()
        try:
            while True:
                task = self._call(self._stub.PullTask, pb.PullRequest(binding=wire.binding()))
                if task.stage == Stage.DONE:
                    return self.completed
                if task.stage == Stage.WAIT:
                    time.sleep(task.retry_after)
                    continue
                if (task.job_id, task.round) in self._abandoned:
                    time.sleep(ABANDONED_POLL_SECONDS)  # until the coordinator moves on
                    continue
                if os.environ.get(KILL_AT_ENV) == Stage.Name(task.stage):
                    os.kill(os.getpid(), signal.SIGKILL)
                try:
                    result = self.handle(task)
                except (SecAggError, wire.WireError, PrivacyError, ValueError) as exc:
                    self._abandon(task, f"dropping out: {exc}")
                    continue
                try:
                    self._stub.SubmitResult(
                        wire.chunks(result, task.stage, task.job_id, task.round),
                        timeout=wire.CALL_SECONDS,
                    )
                except grpc.RpcError as exc:
                    # Late, or the coordinator went away: this round is lost for us, not the
                    # job. Pulling again finds the next round (or the restarted coordinator).
                    self._abandon(task, f"not submitted: {_status(exc)}")
        finally:
            self._stop.set()
            self._channel.close()

    def _abandon(self, task: pb.Task, reason: str) -> None:
        """Leave a round for good: its keys are gone, so its later stages are not ours."""
        self._log(f"{task.job_id} round {task.round}: {reason}")
        self._clients.pop((task.job_id, task.round), None)
        self._abandoned.add((task.job_id, task.round))

    def handle(self, task: pb.Task) -> pb.Result:
        """The answer to one stage of one round."""
        key = (task.job_id, task.round)
        if task.stage == Stage.OFFER:
            return pb.Result(acceptance=self.decide(task))
        if task.stage == Stage.ADVERTISE:
            spec = wire.round_spec(task)
            if spec.threshold < task.job.threshold or spec.dim != tasks.rules(task.job).dim:
                raise SecAggError("the round does not match the job that was offered")
            self._clients = {key: Client(self.name, spec)}
            return pb.Result(advert=wire.advert_to_pb(self._clients[key].advert()))
        client = self._clients.get(key)
        if client is None or client.spec != wire.round_spec(task):
            raise SecAggError("a stage of a round this participant did not start")
        if task.stage == Stage.SHARE:
            adverts = {a.participant: wire.advert_from_pb(a) for a in task.adverts}
            sealed = client.shares(adverts)
            out = [pb.SealedShare(sender=self.name, recipient=r, box=b) for r, b in sealed.items()]
            return pb.Result(shares=pb.SharesOut(shares=out))
        if task.stage == Stage.INPUT:
            client.accept_shares({s.sender: s.box for s in task.shares})
            release = self._release(task)
            values = np.asarray(release.value, dtype=np.int64)
            if np.abs(values).max() > task.job.value_bound:
                raise SecAggError("the noised vector exceeds the job's public bound")
            masked = client.masked(values)
            self.completed.append(task.job_id)
            return pb.Result(
                masked=pb.MaskedVector(
                    bits=client.spec.bits,
                    values=wire.pack_ring(masked, client.spec.bits),
                    ledger_entry=release.entry_hash,
                    ledger_uuid=release.ledger_uuid,
                    ledger_id=release.ledger_id,
                )
            )
        if task.stage == Stage.UNMASK:
            return pb.Result(reveal=wire.reveal_to_pb(client.reveal(tuple(task.survivors))))
        raise wire.WireError(f"unknown task stage {task.stage}")

    # ------------------------------------------------------------------ policy and gate

    def decide(self, task: pb.Task) -> pb.Acceptance:
        """Accept or refuse an offered job under this participant's policy alone."""
        job = task.job
        if job.kind not in tasks.KINDS:
            return _refuse(f"unknown job kind {job.kind!r}")
        if job.dataset != self.policy.dataset:
            return _refuse(f"this participant holds {self.policy.dataset!r}, not {job.dataset!r}")
        if job.threshold < self.policy.min_noise_shares:
            return _refuse(
                f"the job needs {job.threshold} noise shares; policy requires"
                f" {self.policy.min_noise_shares}"
            )
        if len(self.data.x) > job.max_records:
            return _refuse(
                f"{len(self.data.x)} records exceed the job's public bound of {job.max_records}"
            )
        if (job.kind == "dp_gsmp" or job.classes) and self.data.labels is None:
            return _refuse("this job needs targets or labels; join with --target COLUMN")
        try:
            if tasks.value_bound(job) != job.value_bound:
                return _refuse("the job's value bound does not follow from its parameters")
        except (tasks.TaskError, ValueError) as exc:
            return _refuse(f"unusable job description: {exc}")
        if not job.dp:
            if self.recipient not in self.pool.trusted_recipients:
                return _refuse("exact (non-DP) releases to this coordinator are not trusted")
            return pb.Acceptance(accepted=True)
        mechanism = tasks.rules(job).mechanism
        price = self.gate.price(mechanism, self.pool).rho
        if price > Fraction(job.rho) or price > self.gate.remaining(self.pool):
            try:  # let the gate record the refusal in the ledger; nothing is computed
                self.gate.release(self.pool, mechanism, _never, requester=self.recipient)
            except PrivacyError as exc:
                return _refuse(f"over budget: {exc}")
            raise AssertionError("the gate released a request it could not afford")
        return pb.Acceptance(accepted=True)

    def _release(self, task: pb.Task):
        job = task.job
        description = f"federated {job.kind} {task.job_id} round {task.round}"
        x, y = self.data.x, self.data.labels
        values = lambda: tasks.local_vector(job, x, y)  # noqa: E731 - run inside the gate
        if job.dp:
            release = self.gate.release(
                self.pool,
                tasks.rules(job).mechanism,
                values,
                requester=self.recipient,
                description=description,
            )
        else:
            release = self.gate.release_exact(
                self.pool,
                values,
                requester=self.recipient,
                recipient=self.recipient,
                description=description,
            )
        return require_release(release)

    # ------------------------------------------------------------------ transport

    def _call(
        self, method: Callable, request: pb.RegisterRequest | pb.PullRequest
    ) -> pb.RegisterReply | pb.Task:
        """Register or pull, with a deadline; retried while the coordinator is unreachable
        (restarting, say) for up to ``give_up_seconds``."""
        backoff, give_up = 0.2, time.monotonic() + self.give_up_seconds
        while True:
            try:
                return method(request, timeout=wire.CALL_SECONDS)
            except grpc.RpcError as exc:
                code = exc.code()
                if code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > give_up:
                    raise ConnectionError(f"{self.address}: {_status(exc)}") from None
            time.sleep(backoff)
            backoff = min(2 * backoff, 2.0)
            request = _rebind(request)

    def _beat(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            with contextlib.suppress(grpc.RpcError):  # the pull loop reports a lost coordinator
                self._stub.Heartbeat(
                    pb.HeartbeatRequest(binding=wire.binding()), timeout=wire.CALL_SECONDS
                )


def _rebind(request: object) -> object:
    """The same request with a fresh nonce (a retry is a new request, not a replay)."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.binding.CopyFrom(wire.binding(copy.binding.job_id, copy.binding.round))
    return copy


def _status(exc: grpc.RpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]


def _refuse(reason: str) -> pb.Acceptance:
    return pb.Acceptance(accepted=False, reason=reason)


def _never() -> np.ndarray:
    raise AssertionError("an over-budget request must not compute its value")
