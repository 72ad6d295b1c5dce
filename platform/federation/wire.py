"""gramfed.v1 on the wire: limits, bindings, chunking, and conversions to and from protobuf."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator

import numpy as np

from gramfed.platform.federation.secagg import SHARE_BYTES, Advert, Reveal, RoundSpec
from gramfed.protos import federation_pb2 as pb

MAX_MESSAGE_BYTES = 4 << 20  # per gRPC message, both directions
CHUNK_BYTES = 1 << 20  # a submitted Result is cut into chunks of this size
MAX_RESULT_BYTES = 256 << 20  # a whole reassembled Result
NONCE_BYTES = 16
CALL_SECONDS = 10.0  # the deadline a participant puts on every call
MAX_DEADLINE_SECONDS = 300  # the coordinator refuses calls without a deadline this close

Stage = pb.Task.Stage
SERVICE = "gramfed.v1.Coordinator"


class WireError(ValueError):
    """A message that is well-formed protobuf but not a valid gramfed.v1 message."""


def channel_options() -> list[tuple[str, int]]:
    """Message size limits, the same on both ends."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


def binding(job_id: str = "", round_: int = 0) -> pb.Binding:
    """A request binding with a fresh random nonce."""
    return pb.Binding(job_id=job_id, round=round_, nonce=os.urandom(NONCE_BYTES))


def chunks(
    result: pb.Result, stage: int, job_id: str, round_: int, size: int = CHUNK_BYTES
) -> Iterator[pb.ResultChunk]:
    """``result`` as a stream of chunks; the last carries the SHA-256 of the whole."""
    data = result.SerializeToString()
    total = max(1, -(-len(data) // size))
    bind = binding(job_id, round_)
    for i in range(total):
        yield pb.ResultChunk(
            binding=bind if i == 0 else pb.Binding(job_id=job_id, round=round_),
            stage=stage,
            index=i,
            total=total,
            data=data[i * size : (i + 1) * size],
            sha256=hashlib.sha256(data).digest() if i == total - 1 else b"",
        )


def reassemble(stream: Iterable[pb.ResultChunk]) -> tuple[pb.ResultChunk, pb.Result]:
    """The first chunk (its binding and stage) and the parsed Result; checks order and digest."""
    first: pb.ResultChunk | None = None
    parts: list[bytes] = []
    size = 0
    digest = b""
    for chunk in stream:
        if first is None:
            first = chunk
            if not 1 <= chunk.total <= MAX_RESULT_BYTES // CHUNK_BYTES + 1:
                raise WireError(f"a result cannot have {chunk.total} chunks")
        elif (chunk.binding.job_id, chunk.binding.round, chunk.stage, chunk.total) != (
            first.binding.job_id,
            first.binding.round,
            first.stage,
            first.total,
        ):
            raise WireError("chunks of one result must share job, round, stage and count")
        if chunk.index != len(parts):
            raise WireError(f"chunk {chunk.index} arrived out of order")
        size += len(chunk.data)
        if size > MAX_RESULT_BYTES:
            raise WireError(f"a result may not exceed {MAX_RESULT_BYTES} bytes")
        parts.append(chunk.data)
        digest = chunk.sha256
    if first is None:
        raise WireError("an empty result stream")
    if len(parts) != first.total:
        raise WireError(f"{len(parts)} of {first.total} chunks arrived")
    data = b"".join(parts)
    if hashlib.sha256(data).digest() != digest:
        raise WireError("the result's SHA-256 does not match its chunks")
    return first, pb.Result.FromString(data)


# --------------------------------------------------------------------------- conversions


def ring_bytes(bits: int) -> int:
    return -(-bits // 8)


def pack_ring(values: np.ndarray, bits: int) -> bytes:
    """Ring elements as little-endian integers of ceil(bits / 8) bytes each."""
    raw = np.asarray(values, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return raw[:, : ring_bytes(bits)].tobytes()


def unpack_ring(data: bytes, bits: int, dim: int) -> np.ndarray:
    width = ring_bytes(bits)
    if len(data) != width * dim:
        raise WireError(f"a masked vector of {dim} {bits}-bit elements has {width * dim} bytes")
    raw = np.zeros((dim, 8), dtype=np.uint8)
    raw[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(dim, width)
    return raw.view("<u8").reshape(dim).astype(np.uint64)


def round_spec(task: pb.Task) -> RoundSpec:
    s = task.secagg
    return RoundSpec(task.job_id, task.round, tuple(s.roster), s.threshold, s.dim, s.bits)


def secagg_message(spec: RoundSpec) -> pb.SecAggRound:
    return pb.SecAggRound(
        roster=list(spec.roster), threshold=spec.threshold, dim=spec.dim, bits=spec.bits
    )


def advert_to_pb(advert: Advert) -> pb.Advert:
    return pb.Advert(participant=advert.name, mask_key=advert.mask_key, share_key=advert.share_key)


def advert_from_pb(message: pb.Advert) -> Advert:
    if len(message.mask_key) != 32 or len(message.share_key) != 32:
        raise WireError("X25519 public keys are 32 bytes")
    return Advert(message.participant, message.mask_key, message.share_key)


def reveal_to_pb(reveal: Reveal) -> pb.Reveal:
    def values(shares: dict[str, int]) -> list[pb.ShareValue]:
        return [
            pb.ShareValue(participant=k, value=v.to_bytes(SHARE_BYTES, "big"))
            for k, v in shares.items()
        ]

    return pb.Reveal(
        seed_shares=values(dict(reveal.seed_shares)), key_shares=values(dict(reveal.key_shares))
    )


def reveal_from_pb(name: str, message: pb.Reveal) -> Reveal:
    def values(shares: Iterable[pb.ShareValue]) -> dict[str, int]:
        out = {}
        for s in shares:
            if len(s.value) != SHARE_BYTES:
                raise WireError(f"a share is {SHARE_BYTES} bytes")
            out[s.participant] = int.from_bytes(s.value, "big")
        return out

    return Reveal(name, values(message.seed_shares), values(message.key_shares))
