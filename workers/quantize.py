"""Vector codecs for ADMM messages: exact float64 and unbiased stochastic quantization.

A quantized message is real bytes. Values are rounded at random to one of the two
neighbouring points of a grid, up with probability equal to the fractional position
between them, so ``E[decode(encode(x))] = x`` exactly on any grid. The grids:

* ``spacing="log"`` (the default at ``bits=b``): zero and ``+-g_k``, ``k = 1 .. 2^(b-1) - 1``,
  magnitudes spaced geometrically from the smallest non-zero ``|x|`` to the largest. Each
  value is then rounded to within a fixed *fraction of itself* (the grid ratio), however
  wide the range: GSMP weights span many decades (a trend component at 4e4 beside a
  seasonal one at 0.2), and a uniform grid's step, a fraction of the largest, would round
  every small weight to 0 or to that step. A level carries the magnitude index and the sign.
* ``spacing="uniform"`` at ``bits=b``: ``2^b`` levels spanning ``[min x, max x]``.
* ``step=Delta``: the multiples of a fixed step (the reference's Delta).

Level indices are bit-packed; when most levels are zero (sparse GSMP weights) a bitmap of
non-zeros is sent instead of every level, whichever is shorter.

Updates (``encode_update``): consensus ADMM sends the same vectors round after round, and
they settle. An update message carries a vector as its change from a reference the receiver
already holds (the previous message's reconstruction): the support of the new vector as a
bitmap, and on it the differences from the reference, quantized as above. The grid then
spans the round's changes, which shrink as the iterations settle, so the quantization error
shrinks with them instead of staying at a fixed fraction of the weights' range; the zeros of
the new vector (the sparse GSMP weights) are reproduced exactly. Still unbiased: the
reconstruction is the reference plus an unbiased estimate of the difference.

Layout (little endian): ``u8 kind | u32 count | u8 width | f64 origin | f64 step`` then,
for kind DENSE, ``count * width`` packed bits of level indices; for kinds SPARSE and UPDATE,
``count`` bitmap bits followed by ``nnz * width`` packed bits (UPDATE: differences from the
reference on the bitmap's support). Kind EXACT carries raw float64 values. On a log grid
the kind has ``LOG_GRID`` set, ``origin`` is ``log g_1`` and ``step`` the log grid ratio;
level ``2k + s`` is ``(-1)^s g_k`` (level 0 is zero).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

_HEADER = struct.Struct("<BIBdd")
_EXACT, _DENSE, _SPARSE, _UPDATE = 0, 1, 2, 3
LOG_GRID = 0x10
Spacing = Literal["log", "uniform"]
MAX_COUNT = 1 << 24


class MessageError(ValueError):
    """A vector message that cannot be decoded (truncated, corrupt or oversized)."""


class VectorCodec(Protocol):
    def encode(self, values: Tensor) -> bytes: ...

    def decode(self, payload: bytes) -> Tensor: ...

    def encode_update(self, values: Tensor, reference: Tensor) -> bytes:
        """``values`` for a receiver that holds ``reference`` (``decode_update``)."""
        ...


class ExactCodec:
    """Unquantized float64 messages."""

    def encode(self, values: Tensor) -> bytes:
        array = values.detach().to("cpu", torch.float64).numpy()
        return _HEADER.pack(_EXACT, array.size, 64, 0.0, 0.0) + array.astype("<f8").tobytes()

    def decode(self, payload: bytes) -> Tensor:
        return decode_vector(payload)

    def encode_update(self, values: Tensor, reference: Tensor) -> bytes:
        """Exact values need no reference."""
        return self.encode(values)


@dataclass
class StochasticQuantizer:
    """Unbiased stochastic quantization at ``bits`` per value (on a ``spacing`` grid) or on
    the uniform grid of ``step`` (module docstring)."""

    bits: int | None = None
    step: float | None = None
    seed: int = 0
    spacing: Spacing = "log"
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if (self.bits is None) == (self.step is None):
            raise ValueError("give exactly one of bits or step")
        if self.spacing not in ("log", "uniform"):
            raise ValueError(f"spacing must be 'log' or 'uniform', got {self.spacing!r}")
        if self.bits is not None and not 1 <= self.bits <= 32:
            raise ValueError(f"bits must be in 1..32, got {self.bits}")
        if self.bits == 1 and self.spacing == "log":
            raise ValueError(
                "a log grid needs at least 2 bits (a sign and a magnitude); "
                "use spacing='uniform' for 1 bit"
            )
        if self.step is not None and not (self.step > 0 and math.isfinite(self.step)):
            raise ValueError(f"step must be positive and finite, got {self.step}")
        self._rng = np.random.default_rng(self.seed)

    @property
    def _log(self) -> bool:
        return self.step is None and self.spacing == "log"

    def encode(self, values: Tensor) -> bytes:
        levels, width, origin, step = self._quantize(_finite(values))
        return _pack(levels, width, origin, step, LOG_GRID if self._log else 0)

    def decode(self, payload: bytes) -> Tensor:
        return decode_vector(payload)

    def encode_update(self, values: Tensor, reference: Tensor) -> bytes:
        """An UPDATE message: the support of ``values`` and, on it, ``values - reference``
        quantized (module docstring)."""
        x, ref = _finite(values), _finite(reference)
        if ref.shape != x.shape:
            raise ValueError(f"reference of shape {ref.shape} for values of shape {x.shape}")
        support = x != 0
        levels, width, origin, step = self._quantize(x[support] - ref[support])
        kind = _UPDATE | (LOG_GRID if self._log else 0)
        return _pack_masked(kind, support, levels, width, origin, step)

    def _quantize(self, x: np.ndarray) -> tuple[np.ndarray, int, float, float]:
        """Random levels, bit width, origin and step of ``x`` on this quantizer's grid."""
        if self._log:
            return self._quantize_log(x)
        if self.step is not None:
            step = self.step
            origin = math.floor(float(x.min()) / step) * step if x.size else 0.0
            scaled = (x - origin) / step
        else:
            origin = float(x.min()) if x.size else 0.0
            span = float(x.max()) - origin if x.size else 0.0
            step = span / ((1 << self.bits) - 1) if span > 0 else 1.0
            scaled = (x - origin) / step
        floor = np.floor(scaled)
        levels = (floor + (self._rng.random(x.shape) < scaled - floor)).astype(np.int64)
        levels = np.maximum(levels, 0)
        width = max(1, int(levels.max()).bit_length()) if levels.size else 1
        return levels, width, origin, step

    def _quantize_log(self, x: np.ndarray) -> tuple[np.ndarray, int, float, float]:
        """Levels ``2k + s`` of ``x`` on the log grid from its smallest non-zero magnitude
        to its largest: ``|x|`` rounds between its two neighbouring grid magnitudes (or
        zero and ``g_1``), in the linear domain, so the rounding is unbiased."""
        assert self.bits is not None
        most = (1 << (self.bits - 1)) - 1
        magnitude = np.abs(x)
        nonzero = magnitude[magnitude > 0]
        if nonzero.size == 0:
            return np.zeros(x.shape, dtype=np.int64), 1, 0.0, 0.0
        low, high = math.log(float(nonzero.min())), math.log(float(nonzero.max()))
        ratio = (high - low) / (most - 1) if most > 1 and high > low else 0.0
        origin = low if ratio > 0 else high
        below = np.zeros(x.shape, dtype=np.int64)
        if ratio > 0:
            logs = np.log(np.where(magnitude > 0, magnitude, nonzero.min()))
            below = np.floor((logs - origin) / ratio).astype(np.int64) + 1
            below = np.where(magnitude > 0, np.clip(below, 0, most), 0)
            # log and exp round: step once so that g(below) <= |x| < g(below + 1).
            below -= _log_magnitudes(below, origin, ratio) > magnitude
            below += (below < most) & (_log_magnitudes(below + 1, origin, ratio) <= magnitude)
        else:
            below[magnitude >= math.exp(origin)] = most
        lower = _log_magnitudes(below, origin, ratio)
        upper = _log_magnitudes(np.minimum(below + 1, most), origin, ratio)
        gap = upper - lower
        up = np.divide(magnitude - lower, gap, out=np.zeros_like(magnitude), where=gap > 0)
        k = np.minimum(below + (self._rng.random(x.shape) < up), most)
        levels = 2 * k + ((x < 0) & (k > 0))
        width = max(1, int(levels.max()).bit_length())
        return levels, width, origin, ratio


def _log_magnitudes(k: np.ndarray, origin: float, ratio: float) -> np.ndarray:
    """Grid magnitude ``g_k`` of a log grid, 0 for ``k = 0``: the one formula both ends use."""
    return np.where(k > 0, np.exp(origin + (np.maximum(k, 1) - 1) * ratio), 0.0)


def _grid_values(levels: np.ndarray, origin: float, step: float, log: bool) -> np.ndarray:
    """The grid points the received levels stand for; a header whose grid leaves the finite
    floats (only a corrupt or hostile one can) is refused."""
    if not log:
        values = origin + step * levels.astype(np.float64)
    else:
        with np.errstate(over="ignore"):
            magnitude = _log_magnitudes(levels >> 1, origin, step)
        values = np.where(levels & 1, -magnitude, magnitude)
    if not np.all(np.isfinite(values)):
        raise MessageError("vector message header puts its grid outside the finite floats")
    return values


def _finite(values: Tensor) -> np.ndarray:
    x = values.detach().to("cpu", torch.float64).numpy()
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot quantize non-finite values")
    return x


def _pack(levels: np.ndarray, width: int, origin: float, step: float, grid: int) -> bytes:
    header = _HEADER.pack(_DENSE | grid, levels.size, width, origin, step)
    dense = header + _pack_bits(levels, width)
    nonzero = levels != 0
    sparse = _pack_masked(_SPARSE | grid, nonzero, levels[nonzero], width, origin, step)
    return sparse if len(sparse) < len(dense) else dense


def _pack_masked(
    kind: int, mask: np.ndarray, levels: np.ndarray, width: int, origin: float, step: float
) -> bytes:
    """A SPARSE or UPDATE message: header, the bitmap ``mask``, the ``levels`` on it."""
    header = _HEADER.pack(kind, mask.size, width, origin, step)
    return header + np.packbits(mask, bitorder="little").tobytes() + _pack_bits(levels, width)


def _pack_bits(levels: np.ndarray, width: int) -> bytes:
    bits = (levels[:, None] >> np.arange(width)) & 1
    return np.packbits(bits.astype(np.uint8).ravel(), bitorder="little").tobytes()


def _unpack_bits(buffer: bytes, count: int, width: int) -> np.ndarray:
    need = (count * width + 7) // 8
    if len(buffer) < need:
        raise MessageError(f"vector message truncated: {len(buffer)} of {need} payload bytes")
    bits = np.unpackbits(np.frombuffer(buffer[:need], np.uint8), bitorder="little")
    bits = bits[: count * width].reshape(count, width).astype(np.int64)
    return (bits << np.arange(width)).sum(axis=1)


def decode_vector(payload: bytes) -> Tensor:
    """Decode any codec's message into a float64 tensor, validating every length.

    An UPDATE message needs the receiver's reference: ``decode_update``.
    """
    raw_kind, count, width, origin, step, body = _header(payload)
    log, kind = bool(raw_kind & LOG_GRID), raw_kind & ~LOG_GRID
    if raw_kind == _EXACT:
        if len(body) != 8 * count:
            raise MessageError(f"exact message has {len(body)} bytes for {count} values")
        return torch.from_numpy(np.frombuffer(body, "<f8").astype(np.float64))
    _check_grid(width, origin, step)
    if kind == _DENSE:
        levels = _unpack_bits(body, count, width)
        used = (count * width + 7) // 8
    elif kind == _SPARSE:
        mask, on_mask, used = _masked_levels(body, count, width)
        levels = np.zeros(count, dtype=np.int64)
        levels[mask] = on_mask
    elif kind == _UPDATE:
        raise MessageError("an update message decodes only against the receiver's reference")
    else:
        raise MessageError(f"unknown vector message kind {raw_kind}")
    _check_length(body, used)
    return torch.from_numpy(_grid_values(levels, origin, step, log))


def decode_update(payload: bytes, reference: Tensor) -> Tensor:
    """Decode a message sent by ``encode_update`` against the ``reference`` the receiver holds
    (any other kind decodes on its own)."""
    kind, count, width, origin, step, body = _header(payload)
    if kind & ~LOG_GRID != _UPDATE:
        return decode_vector(payload)
    ref = reference.detach().to("cpu", torch.float64).numpy()
    if ref.size != count:
        raise MessageError(f"update message for {count} values, the reference has {ref.size}")
    _check_grid(width, origin, step)
    mask, levels, used = _masked_levels(body, count, width)
    _check_length(body, used)
    out = np.zeros(count, dtype=np.float64)
    out[mask] = ref[mask] + _grid_values(levels, origin, step, bool(kind & LOG_GRID))
    return torch.from_numpy(out)


def _header(payload: bytes) -> tuple[int, int, int, float, float, bytes]:
    if len(payload) < _HEADER.size:
        raise MessageError(f"vector message too short: {len(payload)} bytes")
    kind, count, width, origin, step = _HEADER.unpack_from(payload)
    if count > MAX_COUNT:
        raise MessageError(f"vector message declares {count} values, more than {MAX_COUNT}")
    return kind, count, width, origin, step, payload[_HEADER.size :]


def _check_grid(width: int, origin: float, step: float) -> None:
    if not 1 <= width <= 63 or not (math.isfinite(origin) and math.isfinite(step)):
        raise MessageError("vector message header is corrupt")


def _masked_levels(body: bytes, count: int, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The bitmap of a SPARSE or UPDATE body, the levels on it, and the bytes they used."""
    mask_bytes = (count + 7) // 8
    if len(body) < mask_bytes:
        raise MessageError("sparse vector message truncated in its bitmap")
    mask = np.unpackbits(np.frombuffer(body[:mask_bytes], np.uint8), bitorder="little")
    mask = mask[:count].astype(bool)
    levels = _unpack_bits(body[mask_bytes:], int(mask.sum()), width)
    return mask, levels, mask_bytes + (int(mask.sum()) * width + 7) // 8


def _check_length(body: bytes, used: int) -> None:
    if len(body) != used:
        raise MessageError(f"vector message has {len(body) - used} trailing bytes")


def message_bits(payload: bytes) -> int:
    """Exact number of bits a message occupies on the wire."""
    return 8 * len(payload)
