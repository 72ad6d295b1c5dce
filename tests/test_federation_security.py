"""A real coordinator over mutual TLS refuses bad peers and bad messages with clear statuses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gramfed.platform.federation import pki, wire
from gramfed.platform.federation.coordinator import Coordinator, CoordinatorConfig
from gramfed.platform.federation.jobs import FederatedJob
from gramfed.platform.federation.local import toml_text
from gramfed.platform.federation.participant import Participant, Policy
from gramfed.platform.sketchspec import Points
from gramfed.privacy import keys
from gramfed.privacy.ledger import REFUSAL, RELEASE
from gramfed.protos import federation_pb2 as pb
from gramfed.protos import federation_pb2_grpc as pb_grpc

DENSITY = {
    "job": {"kind": "sketch_build", "name": "density"},
    "data": {"path": "participants.npz"},
    "sketch": {"kernel": "l2", "bandwidth": 1.0, "repetitions": 8, "hashes": 2, "buckets": 16},
    "privacy": {"ledger": "unused.db", "key": "unused.key", "dataset": "clinic", "rho": 0.2},
    "output": {"path": "density.gfs"},
}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> FederatedJob:
    path = tmp_path_factory.mktemp("jobs") / "density.toml"
    path.write_text(toml_text(DENSITY))
    return FederatedJob(spec=path, input_dim=2, threshold=2, max_records=1000)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    pki.init(root)
    pki.issue(root, "coord", server=True)
    for name in ("alice", "revoked"):
        pki.issue(root, name)
    pki.issue(root, "expired", valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    pki.revoke(root, "revoked")
    other = tmp_path_factory.mktemp("other")
    pki.init(other)
    pki.issue(other, "alice")
    return root


@pytest.fixture(scope="module")
def coordinator(
    pki_dir: Path, job: FederatedJob, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Coordinator]:
    issued = pki_dir / "issued"
    config = CoordinatorConfig(
        listen="127.0.0.1:0",
        tls={
            "cert": issued / "coord.crt",
            "key": issued / "coord.key",
            "ca": pki_dir / "ca.crt",
            "allowlist": pki_dir / pki.ALLOWLIST,
        },
        state_dir=tmp_path_factory.mktemp("state"),
        jobs=[job],
    )
    server = Coordinator(config, log=lambda _: None)
    server.start()  # serving, but running no job: every pull answers WAIT
    yield server
    server.stop()


def channel(coordinator: Coordinator, creds: pki.Credentials | None, ca: bytes) -> grpc.Channel:
    if creds is None:
        tls = grpc.ssl_channel_credentials(ca)
    else:
        tls = grpc.ssl_channel_credentials(creds.ca, creds.private_key, creds.certificate)
    return grpc.secure_channel(f"localhost:{coordinator.port}", tls, wire.channel_options())


def register(ch: grpc.Channel, request: pb.RegisterRequest | None = None) -> pb.RegisterReply:
    stub = pb_grpc.CoordinatorStub(ch)
    return stub.Register(request or pb.RegisterRequest(binding=wire.binding()), timeout=5)


def status(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_identity_comes_from_the_certificate(coordinator: Coordinator, pki_dir: Path) -> None:
    alice = pki.Credentials.issued(pki_dir, "alice")
    reply = register(channel(coordinator, alice, alice.ca))
    assert reply.participant == "alice"
    health = health_pb2_grpc.HealthStub(channel(coordinator, alice, alice.ca))
    check = health.Check(health_pb2.HealthCheckRequest(service=wire.SERVICE), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("who", "code"),
    [
        ("none", grpc.StatusCode.UNAVAILABLE),  # the TLS handshake fails: no client certificate
        ("other-ca", grpc.StatusCode.UNAVAILABLE),  # not signed by the project CA
        ("expired", grpc.StatusCode.UNAVAILABLE),  # outside its validity window
        ("revoked", grpc.StatusCode.PERMISSION_DENIED),  # valid, but not on the allowlist
    ],
)
def test_bad_certificates_are_refused(
    coordinator: Coordinator, pki_dir: Path, who: str, code: grpc.StatusCode
) -> None:
    ca = (pki_dir / "ca.crt").read_bytes()
    creds = None
    if who == "other-ca":
        other = next(p for p in pki_dir.parent.iterdir() if p.name.startswith("other"))
        stranger = pki.Credentials.issued(other, "alice")
        creds = pki.Credentials(stranger.certificate, stranger.private_key, ca)
    elif who != "none":
        creds = pki.Credentials.issued(pki_dir, who)
    before = dict(coordinator._alive)
    assert status(lambda: register(channel(coordinator, creds, ca))) == code
    assert coordinator._alive == before  # nobody was registered or seen


def test_replayed_requests_are_refused(coordinator: Coordinator, pki_dir: Path) -> None:
    alice = pki.Credentials.issued(pki_dir, "alice")
    ch = channel(coordinator, alice, alice.ca)
    request = pb.RegisterRequest(binding=wire.binding())
    register(ch, request)
    assert status(lambda: register(ch, request)) == grpc.StatusCode.ALREADY_EXISTS
    stub = pb_grpc.CoordinatorStub(ch)
    result = pb.Result(acceptance=pb.Acceptance(accepted=True))
    chunks = list(wire.chunks(result, pb.Task.OFFER, "density", 1))
    # no round is open: refused as such, and a replay of the same stream as a replay
    assert status(lambda: stub.SubmitResult(iter(chunks), timeout=5)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert status(lambda: stub.SubmitResult(iter(chunks), timeout=5)) == (
        grpc.StatusCode.ALREADY_EXISTS
    )


def test_malformed_oversized_and_deadline_free_calls(
    coordinator: Coordinator, pki_dir: Path
) -> None:
    alice = pki.Credentials.issued(pki_dir, "alice")
    ch = channel(coordinator, alice, alice.ca)
    raw = ch.unary_unary(f"/{wire.SERVICE}/Register")
    assert status(lambda: raw(b"\xff\xff\xff", timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    short = pb.RegisterRequest(binding=pb.Binding(nonce=b"123")).SerializeToString()
    assert status(lambda: raw(short, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    big = pb.RegisterRequest(binding=wire.binding(), software="x" * (wire.MAX_MESSAGE_BYTES + 1))
    assert status(lambda: register(ch, big)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    fresh = pb.RegisterRequest(binding=wire.binding()).SerializeToString()
    assert status(lambda: raw(fresh)) == grpc.StatusCode.INVALID_ARGUMENT  # no deadline
    stub = pb_grpc.CoordinatorStub(ch)
    chunks = list(wire.chunks(pb.Result(), pb.Task.OFFER, "density", 1, size=4))
    chunks[-1].sha256 = b"0" * 32
    assert status(lambda: stub.SubmitResult(iter(chunks), timeout=5)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_fuzzed_payloads_get_clear_statuses(coordinator: Coordinator, pki_dir: Path) -> None:
    alice = pki.Credentials.issued(pki_dir, "alice")
    ch = channel(coordinator, alice, alice.ca)
    rng = np.random.default_rng(5)
    allowed = {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
    for method in ("Register", "Heartbeat", "PullTask"):
        call = ch.unary_unary(f"/{wire.SERVICE}/{method}")
        for _ in range(40):
            payload = rng.bytes(int(rng.integers(0, 200)))
            try:
                call(payload, timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() in allowed, (method, payload, exc.code(), exc.details())
    submit = ch.stream_unary(f"/{wire.SERVICE}/SubmitResult")
    for _ in range(40):
        payloads = [rng.bytes(int(rng.integers(0, 100))) for _ in range(int(rng.integers(1, 4)))]
        try:
            submit(iter(payloads), timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() in allowed, (payloads, exc.code(), exc.details())
    assert register(ch).participant == "alice"  # still serving


def test_a_task_over_budget_is_refused_locally_and_nothing_is_released(
    tmp_path: Path, job: FederatedJob
) -> None:
    keys.generate(tmp_path / "ledger.key")
    policy = Policy(
        dataset="clinic", ledger=tmp_path / "ledger.db", key=tmp_path / "ledger.key",
        budget_epsilon=0.5,
    )  # fmt: skip
    member = Participant(
        "127.0.0.1:1", policy, Points(np.zeros((10, 2)), None), None, plaintext=True,
        log=lambda _: None,
    )  # fmt: skip
    offer = pb.Task(stage=pb.Task.OFFER, job_id="density", round=1, job=job.load().description)
    answer = member.decide(offer)
    assert not answer.accepted and "over budget" in answer.reason
    assert len(member.ledger.entries(kinds=(REFUSAL,))) == 1
    assert not member.ledger.entries(kinds=(RELEASE,))
    exact = pb.Task()
    exact.CopyFrom(offer)
    exact.job.dp = False
    refused = member.decide(exact)
    assert not refused.accepted and "not trusted" in refused.reason
    few = pb.Task()
    few.CopyFrom(offer)
    few.job.threshold = 1
    assert "noise shares" in member.decide(few).reason
