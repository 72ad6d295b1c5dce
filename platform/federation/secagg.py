"""Secure aggregation: the coordinator learns the sum of integer vectors and nothing else.

The protocol is the pairwise-masking one of Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (CCS 2017), for a semi-honest coordinator; this module is
pure (no network) and ``coordinator``/``participant`` carry its messages over gRPC.

One round, for a sorted roster of n participants and a threshold t > n/2:

1. **Advertise.** Each participant makes two fresh X25519 key pairs: one to agree pairwise mask
   keys, one to encrypt Shamir shares. Keys are fresh every round: a dropout's mask key is
   revealed when it is unmasked, so it must never be used again.
2. **Share.** Each participant Shamir-shares (t of n, over the prime field 2^521 - 1) its mask
   secret key and a fresh self-mask seed, and seals the share for j with ChaCha20-Poly1305 under
   a key agreed with j's share key; the coordinator only relays the sealed shares.
3. **Masked input.** Participant i sends ``y_i = x_i + PRG(b_i) + sum_{j>i} PRG(k_ij) -
   sum_{j<i} PRG(k_ij)  (mod 2^bits)``, where k_ij = HKDF(X25519(i, j)) is bound to the job,
   round, roster and pair, and PRG is the ChaCha20 key stream. The pair masks cancel in the sum;
   the self mask keeps y_i hidden even if i is wrongly declared dropped after sending it.
4. **Unmask.** The coordinator names the survivors S (those whose y arrived, at least t). Each
   survivor reveals, for every member of S, its share of the self-mask seed and, for every
   dropout, its share of the mask secret key, never both for the same participant, and only for
   one set S per round. t shares rebuild each secret; the coordinator removes the self masks of S
   and the dropouts' pair masks with S, and reads off ``sum_{i in S} x_i``.

The ring Z_{2^bits} is sized for the sum (``ring_bits``), so the signed sum is recovered exactly.

``DistributedDiscreteGaussian`` is the noise each participant adds to its integer vector before
masking, and the price each participant's gate charges for it (see its docstring).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gramfed.privacy.accountant import DiscreteGaussianEvent
from gramfed.privacy.budget import fraction_text
from gramfed.privacy.errors import MechanismError
from gramfed.privacy.mechanisms import Mechanism, PrivacyLoss
from gramfed.privacy.rng import RandomBits
from gramfed.privacy.samplers import discrete_gaussian_array

PRIME = 2**521 - 1  # a Mersenne prime above every 256-bit secret
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32
_PROTOCOL = b"gramfed secagg v1"


class SecAggError(ValueError):
    """A round that cannot proceed: bad parameters, too many dropouts, tampered messages."""


# --------------------------------------------------------------------------- parameters


def ring_bits(parties: int, bound: int) -> int:
    """Bits of the ring Z_{2^bits} in which n values in [-bound, bound] sum without wrapping."""
    if parties < 1 or bound < 1:
        raise SecAggError("ring_bits needs at least one party and a positive bound")
    bits = (2 * parties * bound).bit_length()  # 2^bits > 2 n bound: no wrap-around
    if bits > 64:
        raise SecAggError(f"a sum of {parties} values bounded by {bound} needs {bits} > 64 bits")
    return bits


@dataclass(frozen=True)
class RoundSpec:
    """What a secure-aggregation round is about; every key and mask is bound to all of it."""

    job: str
    round: int
    roster: tuple[str, ...]
    threshold: int
    dim: int
    bits: int

    def __post_init__(self) -> None:
        roster = tuple(self.roster)
        object.__setattr__(self, "roster", roster)
        if list(roster) != sorted(set(roster)):
            raise SecAggError("the roster must list distinct participant names in sorted order")
        n = len(roster)
        if n < 2:
            raise SecAggError("secure aggregation needs at least two participants")
        if not n // 2 < self.threshold <= n:
            raise SecAggError(
                f"the threshold must lie in ({n // 2}, {n}] for {n} participants,"
                f" got {self.threshold}"
            )
        if self.dim < 1 or not 1 <= self.bits <= 64:
            raise SecAggError("dim must be positive and bits in [1, 64]")

    @property
    def binding(self) -> bytes:
        """The canonical encoding of the round, mixed into every key derivation."""
        return _encode(_PROTOCOL, self.job, self.round, *self.roster, self.threshold, self.dim,
                       self.bits)  # fmt: skip

    def index(self, name: str) -> int:
        """The Shamir x-coordinate of ``name`` (1-based position in the roster)."""
        try:
            return self.roster.index(name) + 1
        except ValueError:
            raise SecAggError(f"{name!r} is not in this round's roster") from None

    def signed(self, values: np.ndarray) -> np.ndarray:
        """Ring elements as signed integers in [-2^(bits-1), 2^(bits-1))."""
        v = np.asarray(values, dtype=np.uint64) & _ring_mask(self.bits)
        if self.bits == 64:
            return v.view(np.int64)  # two's complement is the signed reading of Z_{2^64}
        out = v.astype(np.int64)
        out[out >= 1 << (self.bits - 1)] -= 1 << self.bits
        return out


@dataclass(frozen=True)
class Advert:
    """A participant's public keys for one round."""

    name: str
    mask_key: bytes
    share_key: bytes


@dataclass(frozen=True)
class Reveal:
    """One survivor's unmasking message: shares of survivors' seeds and dropouts' mask keys."""

    name: str
    seed_shares: Mapping[str, int] = field(default_factory=dict)
    key_shares: Mapping[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- participant side


class Client:
    """A participant's state for one round (fresh keys and seed; discard after the round)."""

    def __init__(self, name: str, spec: RoundSpec) -> None:
        self.name = name
        self.spec = spec
        self._x = spec.index(name)
        self._mask_key = X25519PrivateKey.generate()
        self._share_key = X25519PrivateKey.generate()
        self._seed = secrets.token_bytes(SECRET_BYTES)
        self._peers: dict[str, Advert] = {}
        self._held: dict[str, tuple[int, int]] = {}  # sender -> (seed share, key share)
        self._survivors: frozenset[str] | None = None

    def advert(self) -> Advert:
        return Advert(
            self.name, _raw(self._mask_key.public_key()), _raw(self._share_key.public_key())
        )

    def shares(self, adverts: Mapping[str, Advert]) -> dict[str, bytes]:
        """Sealed shares of this participant's seed and mask key, one per roster member."""
        if set(adverts) != set(self.spec.roster):
            raise SecAggError("adverts must cover exactly the roster")
        if adverts[self.name] != self.advert():
            raise SecAggError("the relayed advert of this participant was altered")
        self._peers = dict(adverts)
        seed = _shamir_split(int.from_bytes(self._seed, "big"), self.spec)
        key = _shamir_split(int.from_bytes(_raw_private(self._mask_key), "big"), self.spec)
        sealed = {}
        for peer in self.spec.roster:
            x = self.spec.index(peer)
            plain = seed[x].to_bytes(SHARE_BYTES, "big") + key[x].to_bytes(SHARE_BYTES, "big")
            sealed[peer] = self._aead(self.name, peer).encrypt(bytes(12), plain, self.spec.binding)
        return sealed

    def accept_shares(self, sealed: Mapping[str, bytes]) -> None:
        """Open the shares addressed to this participant (sender -> sealed share)."""
        if set(sealed) != set(self.spec.roster):
            raise SecAggError("shares must come from every roster member")
        for sender, box in sealed.items():
            try:
                plain = self._aead(sender, self.name).decrypt(bytes(12), box, self.spec.binding)
            except InvalidTag:
                raise SecAggError(f"the share from {sender!r} was tampered with") from None
            self._held[sender] = (
                int.from_bytes(plain[:SHARE_BYTES], "big"),
                int.from_bytes(plain[SHARE_BYTES:], "big"),
            )

    def masked(self, values: np.ndarray) -> np.ndarray:
        """``values`` (integers, |v| small enough for the ring) plus all masks, mod 2^bits."""
        v = np.asarray(values)
        if v.dtype.kind not in "iu" or v.shape != (self.spec.dim,):
            raise SecAggError(f"masked input must be {self.spec.dim} integers")
        limit = ((1 << (self.spec.bits - 1)) - 1) // len(self.spec.roster)
        if v.size and int(np.max(np.abs(v.astype(np.int64)))) > limit:
            raise SecAggError(f"a value exceeds the ring's per-participant bound {limit}")
        if len(self._held) != len(self.spec.roster):
            raise SecAggError("shares must be exchanged before masking")
        y = v.astype(np.int64).astype(np.uint64)
        y += _prg(_self_key(self._seed, self.name, self.spec), self.spec.dim)
        for peer in self.spec.roster:
            if peer == self.name:
                continue
            pair = _pair_key(self._mask_key, self._peers[peer].mask_key, self.name, peer, self.spec)
            mask = _prg(pair, self.spec.dim)
            y = y + mask if self.name < peer else y - mask
        return y & _ring_mask(self.spec.bits)

    def reveal(self, survivors: Sequence[str]) -> Reveal:
        """Shares that let the coordinator unmask ``survivors``' sum; refuses unsafe requests."""
        alive = frozenset(survivors)
        if self._survivors is not None and alive != self._survivors:
            raise SecAggError("already unmasked this round for another survivor set")
        if not alive <= set(self.spec.roster) or self.name not in alive:
            raise SecAggError("the survivor set must be part of the roster and include us")
        if len(alive) < self.spec.threshold:
            raise SecAggError(
                f"{len(alive)} survivors are fewer than the threshold {self.spec.threshold}"
            )
        self._survivors = alive
        return Reveal(
            self.name,
            seed_shares={s: self._held[s][0] for s in alive},
            key_shares={d: self._held[d][1] for d in self.spec.roster if d not in alive},
        )

    def _aead(self, sender: str, recipient: str) -> ChaCha20Poly1305:
        peer = recipient if sender == self.name else sender
        secret = self._share_key.exchange(X25519PublicKey.from_public_bytes(
            self._peers[peer].share_key))  # fmt: skip
        info = _encode(b"share", self.spec.binding, sender, recipient)
        return ChaCha20Poly1305(_hkdf(secret, info))


# --------------------------------------------------------------------------- coordinator side


class Aggregator:
    """The coordinator's side: collects masked vectors and unmasks their sum."""

    def __init__(self, spec: RoundSpec, adverts: Mapping[str, Advert]) -> None:
        if set(adverts) != set(spec.roster):
            raise SecAggError("adverts must cover exactly the roster")
        self.spec = spec
        self._adverts = dict(adverts)
        self._masked: dict[str, np.ndarray] = {}

    def add(self, name: str, masked: np.ndarray) -> None:
        self.spec.index(name)
        y = np.asarray(masked, dtype=np.uint64)
        if y.shape != (self.spec.dim,):
            raise SecAggError(f"a masked vector must have {self.spec.dim} entries")
        self._masked[name] = y & _ring_mask(self.spec.bits)

    @property
    def survivors(self) -> tuple[str, ...]:
        return tuple(sorted(self._masked))

    def unmask(self, reveals: Mapping[str, Reveal]) -> np.ndarray:
        """The signed sum of the survivors' inputs, from at least ``threshold`` reveals."""
        spec, alive = self.spec, self.survivors
        if len(alive) < spec.threshold:
            raise SecAggError(
                f"only {len(alive)} of {len(spec.roster)} inputs arrived; the threshold is"
                f" {spec.threshold}, so the round cannot be unmasked"
            )
        usable = [r for r in reveals.values() if r.name in alive]
        if len(usable) < spec.threshold:
            raise SecAggError(
                f"only {len(usable)} survivors revealed shares; {spec.threshold} are needed"
            )
        usable = usable[: spec.threshold]
        total = np.zeros(spec.dim, dtype=np.uint64)
        for y in self._masked.values():
            total += y
        for name in alive:
            points = [(spec.index(r.name), r.seed_shares[name]) for r in usable]
            seed = _shamir_join(points).to_bytes(SECRET_BYTES, "big")
            total -= _prg(_self_key(seed, name, spec), spec.dim)
        for gone in spec.roster:
            if gone in alive:
                continue
            points = [(spec.index(r.name), r.key_shares[gone]) for r in usable]
            raw = _shamir_join(points).to_bytes(SECRET_BYTES, "big")
            key = X25519PrivateKey.from_private_bytes(raw)
            if _raw(key.public_key()) != self._adverts[gone].mask_key:
                raise SecAggError(f"the shares of {gone!r}'s mask key do not reconstruct it")
            for name in alive:
                mask = _prg(
                    _pair_key(key, self._adverts[name].mask_key, gone, name, spec), spec.dim
                )
                # name added +mask if name < gone, else -mask: undo that.
                total = total - mask if name < gone else total + mask
        return spec.signed(total)


# --------------------------------------------------------------------------- distributed noise


@dataclass(frozen=True, eq=False)
class DistributedDiscreteGaussian(Mechanism):
    """One participant's share of distributed discrete Gaussian noise, and the price of the sum.

    Each contributor adds N_Z(0, ``sigma2_each``) to every coordinate of its integer vector
    before masking; at least ``parties`` contributions (the round's threshold) are in any sum the
    coordinator can unmask. By Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian
    Mechanism for Federated Learning with Secure Aggregation" (ICML 2021, Thm. 1), a sum of n
    such draws on an integer query of L2 sensitivity D2 in d dimensions is rho-zCDP with

        rho = eps^2 / 2,   eps = sqrt(D2^2 / (n sigma2_each) + tau d / 2),
        tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma2_each k / (k + 1)),

    valid for sigma2_each >= 1/4. That rho (rounded up to a multiple of 2^-40) is what each
    participant's gate charges its own pool: the guarantee concerns the sum, the only value the
    coordinator learns, and assumes at least ``parties`` honest contributions and no collusion
    between the coordinator and other participants. The ledger records it as a discrete Gaussian
    event of the same rho (variance D2^2 / (2 rho)), whose Renyi curve alpha * rho is exactly the
    zCDP statement.
    """

    sigma2_each: Fraction
    parties: int
    l2_sensitivity: float
    dim: int = 1
    sensitivity2: Fraction = field(init=False)

    name: ClassVar[str] = "distributed_discrete_gaussian"
    family: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma2_each", Fraction(self.sigma2_each))
        if self.sigma2_each < Fraction(1, 4):
            raise MechanismError("the distributed discrete Gaussian needs sigma2_each >= 1/4")
        if self.parties < 1 or self.dim < 1:
            raise MechanismError("parties and dim must be positive")
        s = Fraction(self.l2_sensitivity)
        if s <= 0:
            raise MechanismError("l2_sensitivity must be positive")
        object.__setattr__(self, "sensitivity2", s * s)

    @classmethod
    def for_rho(
        cls, rho: float | Fraction, *, parties: int, l2_sensitivity: float, dim: int = 1
    ) -> DistributedDiscreteGaussian:
        """The smallest sigma2_each on a 1/1024 grid whose charge is at most ``rho``."""
        target = Fraction(rho)
        s2 = Fraction(l2_sensitivity) ** 2
        sigma2 = max(Fraction(math.ceil(s2 / (2 * target * parties) * 1024), 1024), Fraction(1, 4))
        while (mech := cls(sigma2, parties, l2_sensitivity, dim)).privacy_map().rho > target:
            sigma2 *= Fraction(1025, 1024)
        return mech

    @property
    def sensitivity(self) -> float:
        return math.sqrt(self.sensitivity2)

    @property
    def total_sigma2(self) -> Fraction:
        """Variance parameter of the noise in a sum of ``parties`` contributions."""
        return self.sigma2_each * self.parties

    def parameters(self) -> dict[str, Any]:
        return {
            "sigma2_each": fraction_text(self.sigma2_each),
            "parties": self.parties,
            "l2_sensitivity": self.sensitivity,
            "dim": self.dim,
        }

    def privacy_map(self) -> PrivacyLoss:
        n, s2 = self.parties, float(self.sigma2_each)
        tau = 10 * sum(math.exp(-2 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, n))
        eps2 = float(self.sensitivity2) / (n * s2) + tau * self.dim / 2
        rho = Fraction(math.ceil(eps2 / 2 * 2**40 * (1 + 1e-12)), 2**40)
        event = DiscreteGaussianEvent(self.sensitivity2 / (2 * rho), self.sensitivity2)
        return PrivacyLoss(rho, (event,), None, "distributed discrete Gaussian, KLS 2021 Thm. 1")

    def _coerce(self, answer: Any) -> np.ndarray:
        x = np.asarray(answer)
        if x.dtype.kind not in "iu":
            raise MechanismError("the distributed discrete Gaussian takes integer answers")
        return x.astype(np.int64)

    def _perturb(self, answer: np.ndarray, rng: RandomBits) -> np.ndarray:
        return answer + discrete_gaussian_array(self.sigma2_each, answer.size, rng)


# --------------------------------------------------------------------------- primitives


def _encode(*parts: bytes | str | int) -> bytes:
    """Length-prefixed concatenation, so no two different tuples encode alike."""
    out = bytearray()
    for part in parts:
        if isinstance(part, int):
            part = part.to_bytes(8, "big", signed=True)
        elif isinstance(part, str):
            part = part.encode()
        out += len(part).to_bytes(4, "big") + part
    return bytes(out)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _pair_key(own: X25519PrivateKey, peer: bytes, a: str, b: str, spec: RoundSpec) -> bytes:
    secret = own.exchange(X25519PublicKey.from_public_bytes(peer))
    low, high = sorted((a, b))
    return _hkdf(secret, _encode(b"pair", spec.binding, low, high))


def _self_key(seed: bytes, name: str, spec: RoundSpec) -> bytes:
    return _hkdf(seed, _encode(b"self", spec.binding, name))


def _prg(key: bytes, dim: int) -> np.ndarray:
    """``dim`` uniform 64-bit words from the ChaCha20 key stream (the key is used once)."""
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * dim)), dtype="<u8").astype(np.uint64)


def _ring_mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _shamir_split(secret: int, spec: RoundSpec) -> dict[int, int]:
    """Shares f(x) for x = 1..n of a random degree t-1 polynomial with f(0) = secret."""
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(spec.threshold - 1)]
    shares = {}
    for x in range(1, len(spec.roster) + 1):
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


def _shamir_join(points: Sequence[tuple[int, int]]) -> int:
    """f(0) by Lagrange interpolation through ``points`` (distinct x)."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * -xj % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    if total >= 1 << (8 * SECRET_BYTES):
        raise SecAggError("the shares are inconsistent: they do not rebuild a 256-bit secret")
    return total
