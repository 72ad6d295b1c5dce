"""Secure aggregation: exact sums, dropout recovery, refusals, masking, distributed noise."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from gramfed.platform.federation import secagg
from gramfed.platform.federation.secagg import Aggregator, Client, RoundSpec, SecAggError
from gramfed.privacy.rng import SeededBits

NAMES = ("p0", "p1", "p2", "p3", "p4")


def _round(
    values: dict[str, np.ndarray], *, threshold: int = 3, bits: int | None = None, job: str = "j"
) -> tuple[RoundSpec, dict[str, Client], Aggregator]:
    """Advertise and share for every participant; return the spec, clients and aggregator."""
    dim = len(next(iter(values.values())))
    bound = max(int(np.abs(v).max()) for v in values.values()) + 1
    spec = RoundSpec(job, 7, tuple(sorted(values)), threshold, dim,
                     bits or secagg.ring_bits(len(values), bound))  # fmt: skip
    clients = {n: Client(n, spec) for n in spec.roster}
    adverts = {n: c.advert() for n, c in clients.items()}
    sealed = {n: c.shares(adverts) for n, c in clients.items()}
    for n, c in clients.items():
        c.accept_shares({sender: boxes[n] for sender, boxes in sealed.items()})
    return spec, clients, Aggregator(spec, adverts)


def _values(rng: np.random.Generator, dim: int = 64) -> dict[str, np.ndarray]:
    return {n: rng.integers(-1000, 1000, dim) for n in NAMES}


def test_sum_is_exact_without_dropouts(rng: np.random.Generator) -> None:
    values = _values(rng)
    spec, clients, agg = _round(values)
    for n, c in clients.items():
        agg.add(n, c.masked(values[n]))
    reveals = {n: c.reveal(agg.survivors) for n, c in clients.items()}
    np.testing.assert_array_equal(agg.unmask(reveals), sum(values.values()))
    assert spec.bits == secagg.ring_bits(5, 1000)


@pytest.mark.parametrize("dropped", [("p1",), ("p0", "p4")])
def test_sum_is_exact_with_dropouts_up_to_the_threshold(
    rng: np.random.Generator, dropped: tuple[str, ...]
) -> None:
    values = _values(rng)
    _, clients, agg = _round(values)
    alive = [n for n in NAMES if n not in dropped]
    for n in alive:  # the dropouts shared their keys, then vanished before sending input
        agg.add(n, clients[n].masked(values[n]))
    reveals = {n: clients[n].reveal(agg.survivors) for n in alive}
    np.testing.assert_array_equal(agg.unmask(reveals), sum(values[n] for n in alive))


def test_beyond_the_threshold_the_round_is_refused(rng: np.random.Generator) -> None:
    values = _values(rng)
    _, clients, agg = _round(values)
    for n in ("p0", "p1"):
        agg.add(n, clients[n].masked(values[n]))
    with pytest.raises(SecAggError, match="threshold is 3"):
        agg.unmask({})
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        clients["p0"].reveal(("p0", "p1"))
    agg.add("p2", clients["p2"].masked(values["p2"]))
    reveals = {n: clients[n].reveal(agg.survivors) for n in ("p0", "p1")}
    with pytest.raises(SecAggError, match="only 2 survivors revealed"):
        agg.unmask(reveals)


def test_a_participant_reveals_for_one_survivor_set_only(rng: np.random.Generator) -> None:
    """Revealing seed shares for S and key shares for a second set would unmask one input."""
    values = _values(rng)
    _, clients, _ = _round(values)
    clients["p0"].reveal(("p0", "p1", "p2", "p3"))
    with pytest.raises(SecAggError, match="another survivor set"):
        clients["p0"].reveal(NAMES)


def test_tampered_shares_and_altered_adverts_are_detected(rng: np.random.Generator) -> None:
    values = _values(rng)
    spec = RoundSpec("j", 1, NAMES, 3, 64, 20)
    clients = {n: Client(n, spec) for n in NAMES}
    adverts = {n: c.advert() for n, c in clients.items()}
    sealed = {n: c.shares(adverts) for n, c in clients.items()}
    to_p0 = {sender: boxes["p0"] for sender, boxes in sealed.items()}
    to_p0["p3"] = bytes([to_p0["p3"][0] ^ 1]) + to_p0["p3"][1:]
    with pytest.raises(SecAggError, match="from 'p3' was tampered"):
        clients["p0"].accept_shares(to_p0)
    swapped = {**adverts, "p1": adverts["p2"]}
    with pytest.raises(SecAggError, match="altered"):
        clients["p1"].shares(swapped)
    with pytest.raises(SecAggError, match="exchanged before masking"):
        Client("p0", spec).masked(values["p0"])


def test_masks_are_bound_to_job_and_round(rng: np.random.Generator) -> None:
    """Inputs masked for one job cannot be unmasked as part of another."""
    values = _values(rng, dim=8)
    _, clients_a, _ = _round(values, job="a")
    _, clients_b, agg_b = _round(values, job="b")
    agg_b.add("p0", clients_a["p0"].masked(values["p0"]))  # replayed from job a
    for n in NAMES[1:]:
        agg_b.add(n, clients_b[n].masked(values[n]))
    reveals = {n: clients_b[n].reveal(agg_b.survivors) for n in NAMES}
    assert not np.array_equal(agg_b.unmask(reveals), sum(values.values()))


def test_one_masked_vector_looks_uniform() -> None:
    """The coordinator's view of one input is indistinguishable from uniform on the ring."""
    values = {n: np.full(20_000, 5, dtype=np.int64) for n in NAMES}  # a constant input
    spec, clients, _ = _round(values, bits=32)
    y = clients["p2"].masked(values["p2"]).astype(np.float64) / 2**spec.bits
    # Key pairs are fresh each run, so this test cannot be seeded; at 1e-6 a false alarm
    # is negligible, while a biased mask (a pairwise mask missing, a short PRG stream)
    # drives both p-values to zero at this sample size.
    assert stats.kstest(y, "uniform").pvalue > 1e-6
    counts = np.bincount((y * 64).astype(int), minlength=64)
    assert stats.chisquare(counts).pvalue > 1e-6


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(SecAggError, match="threshold must lie in"):
        RoundSpec("j", 0, NAMES, 2, 4, 16)
    with pytest.raises(SecAggError, match="sorted order"):
        RoundSpec("j", 0, ("b", "a"), 2, 4, 16)
    with pytest.raises(SecAggError, match="needs 66 > 64 bits"):
        secagg.ring_bits(4, 2**62)
    spec = RoundSpec("j", 0, ("a", "b", "c"), 2, 2, 8)
    with pytest.raises(SecAggError, match="per-participant bound 42"):
        _round({n: np.array([50, 0]) for n in spec.roster}, threshold=2, bits=8)[1]["a"].masked(
            np.array([50, 0])
        )
    with pytest.raises(SecAggError, match="not in this round's roster"):
        Client("zed", spec)


def test_distributed_noise_sums_to_the_charged_variance() -> None:
    mech = secagg.DistributedDiscreteGaussian.for_rho(Fraction(1, 8), parties=5, l2_sensitivity=2)
    loss = mech.privacy_map()
    assert loss.rho <= Fraction(1, 8)
    # tau is negligible here: the charge is the central discrete Gaussian's, Delta^2/(2 sigma^2)
    central = Fraction(4) / (2 * mech.total_sigma2)
    assert central <= loss.rho < central * Fraction(1001, 1000)
    assert loss.events[0].rho == loss.rho
    trials = 4000
    rngs = [SeededBits(f"party {i}") for i in range(mech.parties)]
    total = sum(mech.sample(0, trials, r) for r in rngs)
    # Var(N_Z(0, s2)) <= s2 and is within 1e-9 of it for s2 >= 1 (CKS 2020, Prop. 19)
    se = float(mech.total_sigma2) * math.sqrt(2 / trials)
    assert abs(total.var() - float(mech.total_sigma2)) < 4 * se
    assert abs(total.mean()) < 4 * math.sqrt(float(mech.total_sigma2) / trials)
    with pytest.raises(ValueError, match="sigma2_each >= 1/4"):
        secagg.DistributedDiscreteGaussian(Fraction(1, 8), 3, 1.0)
