"""Federation costs: bytes on the wire, secure-aggregation overhead, round latency on loopback.

    .venv/bin/python bench/federation.py [--participants 16] [--dim 500] [--bits 8]

1. Bytes per participant per ADMM round: the serialized gramfed.v1 ResultChunk stream carrying
   a masked vector of ``dim`` weights, quantized to ``bits`` bits and summed in the ring sized
   for ``participants`` of them, against the same vector as float64 (8 bytes a weight).
2. Secure-aggregation compute per round (in process, no network): advertise, share, mask and
   unmask for n participants, against a plain sum of the same integer vectors.
3. Round latency on loopback: an in-process coordinator over mutual TLS and n participants
   (threads, each with its own channel, gate and ledger) running one secure-aggregation sketch
   round from OFFER to the unmasked sum; ``stage_seconds`` bounds each stage.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.progress import Progress

from gramfed.platform.federation import pki, secagg, wire
from gramfed.platform.federation.coordinator import Coordinator, CoordinatorConfig
from gramfed.platform.federation.jobs import FederatedJob
from gramfed.platform.federation.local import toml_text
from gramfed.platform.federation.participant import Participant, Policy
from gramfed.platform.sketchspec import Points
from gramfed.privacy import keys
from gramfed.protos import federation_pb2 as pb


def wire_bytes(participants: int, dim: int, bits: int) -> tuple[int, int, int]:
    """(ring bits, bytes on the wire for the masked vector, float64 bytes)."""
    ring = secagg.ring_bits(participants, (1 << (bits - 1)) - 1)
    masked = pb.Result(
        masked=pb.MaskedVector(
            bits=ring,
            values=wire.pack_ring(np.zeros(dim, np.uint64), ring),
            ledger_entry="0" * 64,
        )
    )
    chunks = wire.chunks(masked, pb.Task.INPUT, "job-000", 1)
    return ring, sum(c.ByteSize() for c in chunks), 8 * dim


def secagg_seconds(participants: int, dim: int, repeats: int) -> tuple[float, float]:
    """Mean seconds of one full secure-aggregation round, and of a plain sum."""
    names = tuple(f"p{i:02d}" for i in range(participants))
    values = np.random.default_rng(0).integers(-100, 100, (participants, dim))
    spec = secagg.RoundSpec("bench", 1, names, participants // 2 + 1, dim, 32)
    start = time.perf_counter()
    for _ in range(repeats):
        clients = {n: secagg.Client(n, spec) for n in names}
        adverts = {n: c.advert() for n, c in clients.items()}
        sealed = {n: c.shares(adverts) for n, c in clients.items()}
        agg = secagg.Aggregator(spec, adverts)
        for i, (n, c) in enumerate(clients.items()):
            c.accept_shares({s: boxes[n] for s, boxes in sealed.items()})
            agg.add(n, c.masked(values[i]))
        total = agg.unmask({n: c.reveal(agg.survivors) for n, c in clients.items()})
    masked = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        plain = values.sum(axis=0)
    assert np.array_equal(total, plain)
    return masked, (time.perf_counter() - start) / repeats


def round_latency(participants: int, root: Path, on_done: Callable[[], None]) -> float:
    """Seconds from the first OFFER to the unmasked sum, n participants over mutual TLS."""
    pki.init(root / "pki")
    pki.issue(root / "pki", "coord", server=True)
    spec = root / "latency.toml"
    spec.write_text(
        toml_text(
            {
                "job": {"kind": "sketch_build", "name": "latency"},
                "data": {"path": "participants.npz"},
                "sketch": {"kernel": "l2", "bandwidth": 1.0, "repetitions": 8, "hashes": 2,
                           "buckets": 16},
                "privacy": {"ledger": "-", "key": "-", "dataset": "bench", "rho": 0.1},
                "output": {"path": "latency.gfs"},
            }
        )
    )  # fmt: skip
    job = FederatedJob(spec=spec, input_dim=2, threshold=participants // 2 + 1, max_records=10_000)
    issued = root / "pki" / "issued"
    config = CoordinatorConfig(
        listen="127.0.0.1:0",
        tls={
            "cert": issued / "coord.crt",
            "key": issued / "coord.key",
            "ca": root / "pki" / "ca.crt",
            "allowlist": root / "pki" / pki.ALLOWLIST,
        },
        state_dir=root / "state",
        linger_seconds=1.0,
        rounds={"quorum": participants, "participants": participants, "stage_seconds": 30},
        jobs=[job],
    )
    marks: dict[str, float] = {}

    def log(line: str) -> None:
        if line.endswith(": OFFER"):
            marks.setdefault("offer", time.perf_counter())
        elif line.startswith("job latency:"):
            marks["done"] = time.perf_counter()

    coordinator = Coordinator(config, log=log)
    members = []
    rng = np.random.default_rng(1)
    for i in range(participants):
        name = f"p{i:02d}"
        pki.issue(root / "pki", name)
        keys.generate(root / name / "ledger.key")
        policy = Policy(
            dataset="bench", ledger=root / name / "ledger.db", key=root / name / "ledger.key",
            budget_epsilon=10.0,
        )  # fmt: skip
        members.append((name, policy, Points(rng.normal(size=(500, 2)), None)))
    server = threading.Thread(target=coordinator.serve)
    server.start()
    threads = []
    for name, policy, data in members:
        member = Participant(
            coordinator.address, policy, data, pki.Credentials.issued(root / "pki", name),
            log=lambda _: None,
        )  # fmt: skip
        threads.append(threading.Thread(target=member.run))
        threads[-1].start()
    for t in threads:
        t.join()
        on_done()
    server.join()
    assert coordinator.results["latency"]["status"] == "done", coordinator.results
    return marks["done"] - marks["offer"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=16)
    parser.add_argument("--dim", type=int, default=500)
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.participants
    ring, sent, float64 = wire_bytes(n, args.dim, args.bits)
    masked, plain = secagg_seconds(n, args.dim, args.repeats)
    with tempfile.TemporaryDirectory() as tmp, Progress() as progress:
        task = progress.add_task(f"loopback round, {n} participants", total=n)
        latency = round_latency(n, Path(tmp), lambda: progress.advance(task))
    print(f"| measure ({n} participants, {args.dim} weights, {args.bits}-bit) | value |")
    print("|---|---|")
    print(f"| ring bits for the sum | {ring} |")
    print(f"| bytes on the wire per participant per round (masked, chunked protobuf) | {sent} |")
    print(f"| float64 message bytes | {float64} ({float64 / sent:.1f}x the masked message) |")
    print(f"| secure aggregation, compute per round (all parties, one process) | {masked:.3f} s |")
    print(f"| plain integer sum of the same vectors | {plain * 1e6:.1f} us |")
    print(f"| round latency on loopback, mTLS, OFFER to unmasked sum | {latency:.2f} s |")


if __name__ == "__main__":
    main()
