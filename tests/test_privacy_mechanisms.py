"""Privacy maps, calibration, and the distribution of every sampler and mechanism.

Statistical tests use fixed seeds (``SeededBits``), so they are deterministic; each compares the
samples with the exact claimed distribution (chi-square on integer values, Kolmogorov-Smirnov
on real ones) and checks that a 10% error in the scale would have been caught.
"""

import decimal
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from gramfed.privacy import fixedpoint, samplers
from gramfed.privacy.accountant import DiscreteGaussianEvent, PureDPEvent, zcdp_epsilon
from gramfed.privacy.errors import MechanismError
from gramfed.privacy.mechanisms import (
    SHIPPED,
    DiscreteGaussianMechanism,
    DiscreteLaplaceMechanism,
    GaussianMechanism,
    LaplaceMechanism,
    calibrated,
    claimed_epsilon,
    gaussian_sigma_for_rho,
)
from gramfed.privacy.rng import SeededBits

N = 20_000
ALPHA = 1e-3  # significance of each goodness-of-fit test


def _chi_square_p(samples: np.ndarray, log_weight) -> float:
    """Chi-square p-value of integer samples against P[x] proportional to exp(log_weight(x))."""
    lo, hi = int(samples.min()), int(samples.max())
    support = np.arange(lo - 50, hi + 51)
    logw = log_weight(support.astype(float))
    pmf = np.exp(logw - logw.max())
    pmf /= pmf.sum()
    expected = pmf * len(samples)
    # Pool sparse tails so that every cell expects at least 5.
    keep = expected >= 5
    first, last = np.argmax(keep), len(keep) - np.argmax(keep[::-1]) - 1
    counts = np.bincount(samples - support[0], minlength=len(support)).astype(float)
    obs = np.concatenate(
        [[counts[:first].sum()], counts[first : last + 1], [counts[last + 1 :].sum()]]
    )
    exp = np.concatenate(
        [[expected[:first].sum()], expected[first : last + 1], [expected[last + 1 :].sum()]]
    )
    return float(stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def _gaussian_log_weight(sigma2: float):
    return lambda x: -(x * x) / (2 * sigma2)


def _laplace_log_weight(scale: float):
    return lambda x: -np.abs(x) / scale


# --------------------------------------------------------------------------- exact samplers


@pytest.mark.parametrize("gamma", [Fraction(0), Fraction(1, 3), Fraction(1), Fraction(5, 2)])
def test_bernoulli_exp_has_probability_exp_minus_gamma(gamma: Fraction) -> None:
    rng = SeededBits(7)
    hits = sum(samplers.bernoulli_exp(gamma, rng) for _ in range(N))
    p = math.exp(-gamma)
    assert stats.binomtest(hits, N, p).pvalue > ALPHA


@pytest.mark.parametrize("sigma2", [Fraction(1, 2), Fraction(4), Fraction(250, 3)])
def test_discrete_gaussian_sampler_matches_its_pmf(sigma2: Fraction) -> None:
    x = samplers.discrete_gaussian_array(sigma2, N, SeededBits(11))
    assert _chi_square_p(x, _gaussian_log_weight(float(sigma2))) > ALPHA
    assert _chi_square_p(x, _gaussian_log_weight(float(sigma2) * 1.1**2)) < ALPHA


@pytest.mark.parametrize("scale", [Fraction(1, 3), Fraction(1), Fraction(25, 2)])
def test_discrete_laplace_sampler_matches_its_pmf(scale: Fraction) -> None:
    x = samplers.discrete_laplace_array(scale, N, SeededBits(13))
    assert _chi_square_p(x, _laplace_log_weight(float(scale))) > ALPHA
    assert _chi_square_p(x, _laplace_log_weight(float(scale) * 1.1)) < ALPHA


@pytest.mark.parametrize(
    "sigma2", [Fraction(1, 3), Fraction(10773545, 512)], ids=["below-one", "lsh-counts"]
)
def test_batched_discrete_gaussian_matches_the_exact_pmf_and_variance(sigma2: Fraction) -> None:
    # 10^5 draws come from a few batches: the chi-square sees every step of the batched path.
    x = samplers.discrete_gaussian_array(sigma2, 100_000, SeededBits(31))
    assert _chi_square_p(x, _gaussian_log_weight(float(sigma2))) > ALPHA
    assert _chi_square_p(x, _gaussian_log_weight(float(sigma2) * 1.05**2)) < ALPHA
    reach = 60 * (math.isqrt(int(sigma2)) + 1)
    support = np.arange(-reach, reach + 1)
    pmf = np.exp(-(support.astype(float) ** 2) / (2 * float(sigma2)))
    pmf /= pmf.sum()
    variance = float(pmf @ support.astype(float) ** 2)
    fourth = float(pmf @ support.astype(float) ** 4)
    z = (np.mean(x.astype(float) ** 2) - variance) / math.sqrt((fourth - variance**2) / x.size)
    assert abs(z) < 4
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.02  # draws independent of their neighbours


def test_batched_discrete_gaussian_is_exact_at_fixed_point_variances() -> None:
    # The fixed-point Gaussian mechanism's variances (2^46 units here) take the path whose
    # acceptance integers exceed 64 bits; at this sigma N_Z is the normal to within 1e-300.
    sigma2 = 67_720_003_068_411
    x = samplers.discrete_gaussian_array(sigma2, 50_000, SeededBits(32)).astype(float)
    sd = math.sqrt(sigma2)
    assert stats.kstest(x, "norm", args=(0, sd)).pvalue > ALPHA
    assert stats.kstest(x, "norm", args=(0, 1.05 * sd)).pvalue < ALPHA
    z = (np.mean(x**2) / sigma2 - 1) / math.sqrt(2 / x.size)
    assert abs(z) < 4


def test_batched_bernoulli_of_a_ratio_settles_ties_exactly() -> None:
    # Forcing every word onto the threshold T = floor(n 2^64 / d) leaves only the tie rule:
    # success with probability (n 2^64 mod d) / d.
    n, d = 5, 3 * 2**70 + 1
    threshold = (n << 64) // d

    class TiedWords:
        cryptographic = False

        def __init__(self) -> None:
            self.inner = SeededBits(33)  # the tie's own draw

        def fresh_block(self) -> bytes:
            return np.full(64, threshold, dtype="<u8").tobytes()

        def randbelow(self, k: int) -> int:
            return self.inner.randbelow(k)

    words = samplers._WordStream(TiedWords())
    hits = samplers._bernoulli_ratio(np.full(N, n, dtype=object), d, words)
    p = ((n << 64) % d) / d
    assert stats.binomtest(int(hits.sum()), N, p).pvalue > ALPHA


def test_batched_bernoulli_exp_is_exact_past_its_batched_rounds(monkeypatch) -> None:
    # With two batched rounds, most draws of exp(-1) finish in the one-by-one continuation.
    monkeypatch.setattr(samplers, "_ROUNDS_BATCHED", 2)
    words = samplers._WordStream(SeededBits(34))
    hits = samplers._bernoulli_exp_le1_array(np.full(N, 3), 4, words)
    assert stats.binomtest(int(hits.sum()), N, math.exp(-3 / 4)).pvalue > ALPHA
    big = np.array([3 * 2**80 + 7] * N, dtype=object)  # floor(n / d) = 3: a run, then a remainder
    hits = samplers._bernoulli_exp_ratio(big, 2**80, words)
    assert stats.binomtest(int(hits.sum()), N, math.exp(-3 - 7 / 2**80)).pvalue > ALPHA
    a, d = 3 * 2**40, 10 * (3 * 2**40) ** 2 // 9 + 1  # float route, x = 0.9: 40% pass round 2
    hits = samplers._bernoulli_exp_of_squares(np.full(N, a, dtype=np.int64), d, words)
    assert stats.binomtest(int(hits.sum()), N, math.exp(-float(Fraction(a * a, d)))).pvalue > ALPHA


class _ConstantWords:
    """Every word of every block equal to ``word``; ``randbelow`` from a seeded stream."""

    cryptographic = False

    def __init__(self, word: int, seed: int) -> None:
        self.word = word
        self.inner = SeededBits(seed)

    def fresh_block(self) -> bytes:
        return np.full(64, self.word, dtype="<u8").tobytes()

    def randbelow(self, k: int) -> int:
        return self.inner.randbelow(k)


@pytest.mark.parametrize(
    ("a", "d", "on_integers"),
    [
        (3 * 2**40 + 12_345, 2**80 + 3, False),  # x = 9.0000...: a run of nine, a remainder
        (2**40 + 11, 3 * 2**80 + 1, False),  # x = 1/3 + 7e-12
        (2**45 + 7, (2**45 + 7) ** 2 // 3, True),  # x = 3: the float bracket holds 2 and 3
        (2**45 + 8, (2**45 + 8) ** 2 // 3, True),  # x = 3 + 1/d: the same
    ],
)
def test_float_filtered_bernoulli_exp_of_squares_has_probability_exp_minus_x(
    monkeypatch, a: int, d: int, on_integers: bool
) -> None:
    """exp(-a^2 / d) in float64 where its error bracket decides floor(x), and on Python
    integers (the scalar sampler, once per draw) where it does not."""
    scalar_calls = []
    exact = samplers._bernoulli_exp
    monkeypatch.setattr(
        samplers, "_bernoulli_exp", lambda *args: scalar_calls.append(1) or exact(*args)
    )
    words = samplers._WordStream(SeededBits(a % 1000))
    hits = samplers._bernoulli_exp_of_squares(np.full(N, a, dtype=np.int64), d, words)
    p = math.exp(-float(Fraction(a * a, d)))
    assert stats.binomtest(int(hits.sum()), N, p).pvalue > ALPHA
    assert len(scalar_calls) == (N if on_integers else 0)


def test_float_filtered_bernoulli_settles_words_inside_its_error_bracket_exactly() -> None:
    """Every word equal to T = floor(phi 2^64), inside the float bracket at round 1: the first
    round succeeds with the tie's probability (phi 2^64 mod 1), then the second (T far above
    phi 2^64 / 2) fails, so the draw is exp(-phi)'s complement of that probability."""
    a, d = 2**40 + 11, 3 * 2**80 + 1  # x = phi = 1/3 + 7e-12
    threshold = ((a * a) << 64) // d
    tie = (((a * a) << 64) - threshold * d) / d
    words = samplers._WordStream(_ConstantWords(threshold, 35))
    hits = samplers._bernoulli_exp_of_squares(np.full(N, a, dtype=np.int64), d, words)
    assert 0.3 < tie < 0.7  # a word outside the bracket would give all or none
    assert stats.binomtest(int(hits.sum()), N, 1 - tie).pvalue > ALPHA


@pytest.mark.parametrize("bound", [3, 7, 2**31 + 1, 2**32, 3 * 2**40 + 5])
def test_batched_randbelow_is_uniform_on_both_paths(bound: int) -> None:
    """32-bit bounds by multiply-and-shift, larger ones by masking: values below the bound,
    uniform over 10 equal-width cells (and over all values for the small bounds)."""
    words = samplers._WordStream(SeededBits(bound))
    assert samplers._randbelow_array(bound, 0, words).shape == (0,)
    draws = samplers._randbelow_array(bound, N, words)
    assert draws.min() >= 0 and draws.max() < bound
    cells = min(bound, 10)
    counts = np.bincount(draws * cells // bound, minlength=cells)
    assert stats.chisquare(counts).pvalue > ALPHA


def test_runs_of_exp_minus_one_are_geometric() -> None:
    # P[V = v] = exp(-v) (1 - exp(-1)), from one word per draw.
    runs = samplers._exp_minus_one_runs(N, samplers._WordStream(SeededBits(36)))
    observed = np.bincount(np.minimum(runs, 8), minlength=9)
    expected = np.exp(-np.arange(9.0)) * (1 - math.exp(-1))
    expected[8] = math.exp(-8.0)  # P[V >= 8]
    assert stats.chisquare(observed, expected * N).pvalue > ALPHA
    assert runs.min() == 0


def test_exp_thresholds_are_exact_floors() -> None:
    decimal.getcontext().prec = 120
    for v, bits in [(1, 64), (3, 64), (44, 64), (45, 64), (45, 128), (2, 192)]:
        exact = (decimal.Decimal(-v).exp() * 2**bits).to_integral_value(decimal.ROUND_FLOOR)
        assert samplers._exp_neg_floor(v, bits) == int(exact)


@pytest.mark.parametrize("v", [1, 2, 44])
def test_runs_read_more_bits_exactly_when_a_word_ties_a_threshold(v: int) -> None:
    """A first word equal to T_v leaves V in {v - 1, v}: V = v exactly when the rest of U lies
    below the rest of exp(-v)'s expansion, which the next word settles."""
    tied = samplers._exp_neg_floor(v, 64)
    below = samplers._exp_neg_floor(v, 128) - (tied << 64)  # the next 64 bits of exp(-v)

    class Words:
        def __init__(self, nxt: int) -> None:
            self.nxt = nxt

        def take(self, count: int) -> np.ndarray:
            return np.full(count, self.nxt, dtype=np.uint64)

    assert samplers._exp_minus_one_run_from(tied, Words(below - 1)) == v
    assert samplers._exp_minus_one_run_from(tied, Words(below + 1)) == v - 1
    # From W = 0, U < 2^-64 < exp(-44): V >= 44, and further words decide how far it runs.
    assert samplers._exp_minus_one_run_from(0, Words(2**64 - 1)) == 44  # exp(-45) < U
    assert samplers._exp_minus_one_run_from(0, Words(2**63)) == 45  # exp(-46) < U < exp(-45)
    assert samplers._exp_minus_one_run_from(0, Words(1)) == 88  # 2^-128 <= U < 2^-127


def test_array_samplers_use_any_random_bits_source() -> None:
    # A source without whole blocks is read through randbits; same distribution.
    class BitsOnly:
        cryptographic = False

        def __init__(self) -> None:
            self.inner = SeededBits(35)

        def randbits(self, k: int) -> int:
            return self.inner.randbits(k)

        def randbelow(self, n: int) -> int:
            return self.inner.randbelow(n)

    x = samplers.discrete_gaussian_array(Fraction(9, 2), N, BitsOnly())
    assert _chi_square_p(x, _gaussian_log_weight(4.5)) > ALPHA
    y = samplers.discrete_laplace_array(Fraction(7, 3), N, BitsOnly())
    assert _chi_square_p(y, _laplace_log_weight(7 / 3)) > ALPHA


def test_seeded_bits_are_reproducible_and_uniform() -> None:
    assert [SeededBits(3).randbits(64) for _ in range(2)] == [SeededBits(3).randbits(64)] * 2
    rng = SeededBits(5)
    draws = np.array([rng.randbelow(6) for _ in range(6000)])
    assert stats.chisquare(np.bincount(draws, minlength=6)).pvalue > ALPHA
    assert rng.randbits(200) < 2**200


# --------------------------------------------------------------------------- privacy maps


def test_discrete_gaussian_map_is_sensitivity_squared_over_two_sigma_squared() -> None:
    m = DiscreteGaussianMechanism(Fraction(9, 2), l2_sensitivity=3, dim=4)
    loss = m.privacy_map()
    assert loss.rho == Fraction(9) / (2 * Fraction(9, 2)) == 1
    assert loss.events == (DiscreteGaussianEvent(Fraction(9, 2), Fraction(9)),)
    counts = DiscreteGaussianMechanism(8, unit_changes=2)
    assert counts.privacy_map().rho == Fraction(2, 16)
    assert counts.sensitivity == pytest.approx(math.sqrt(2))


def test_gaussian_map_charges_the_rounding_slack_of_the_grid() -> None:
    # Grid 2^-10: sigma = 1 is 2^10 units, sensitivity 1 is 2^10 units, plus ceil(sqrt(dim)) units
    # because rounding each coordinate moves it by at most half a unit.
    m = GaussianMechanism(1.0, 1.0, dim=4, grid_exponent=-10)
    assert m.sigma2_units == 2**20
    assert m.sensitivity_units == 1024 + 2
    assert m.privacy_map().rho == Fraction(1026**2, 2 * 2**20)
    assert m.noise_sd == 1.0


def test_rounded_neighbours_stay_within_the_charged_sensitivity() -> None:
    rng = np.random.default_rng(0)
    e, dim, sens = -6, 9, 0.37
    bound = fixedpoint.l2_units(sens, e, dim)
    for _ in range(2000):
        a = rng.normal(0, 10, dim)
        step = rng.normal(0, 1, dim)
        b = a + step / np.linalg.norm(step) * sens * rng.uniform(0, 1)
        moved = fixedpoint.encode(a, e) - fixedpoint.encode(b, e)
        assert Fraction(float(np.linalg.norm(moved))) <= bound


def test_laplace_maps_are_pure_epsilon() -> None:
    d = DiscreteLaplaceMechanism(Fraction(2), Fraction(3), dim=2)
    assert d.privacy_map().pure_epsilon == Fraction(3, 2)
    assert d.privacy_map().rho == Fraction(9, 8)
    assert d.privacy_map().events == (PureDPEvent(Fraction(3, 2)),)
    m = LaplaceMechanism(1.0, 1.0, dim=3, grid_exponent=-8)
    assert m.scale_units == 256 and m.sensitivity_units == 256 + 3
    assert m.privacy_map().pure_epsilon == Fraction(259, 256)


@pytest.mark.parametrize("rho", [0.01, 0.5, 3.0])
@pytest.mark.parametrize("dim", [1, 10])
def test_gaussian_calibration_meets_the_target_tightly(rho: float, dim: int) -> None:
    m = GaussianMechanism.for_rho(rho, l2_sensitivity=2.5, dim=dim)
    got = m.privacy_map().rho
    assert got <= Fraction(rho)
    assert float(got) == pytest.approx(rho, rel=1e-4)
    assert m.noise_sd == pytest.approx(gaussian_sigma_for_rho(rho, 2.5), rel=1e-4)
    dg = DiscreteGaussianMechanism.for_rho(rho, unit_changes=dim)
    assert dg.privacy_map().rho <= Fraction(rho)


def test_epsilon_calibration_meets_the_target() -> None:
    g = GaussianMechanism.for_epsilon(1.0, 1e-6, l2_sensitivity=1.0)
    assert claimed_epsilon(g, 1e-6) <= 1.0
    assert claimed_epsilon(g, 1e-6) == pytest.approx(1.0, rel=1e-3)
    lap = LaplaceMechanism.for_epsilon(0.5, l1_sensitivity=2.0, dim=3)
    assert lap.privacy_map().pure_epsilon <= Fraction(1, 2)
    for name in SHIPPED:
        m = calibrated(name, 1.0, 1e-6, sensitivity=1.5)
        assert claimed_epsilon(m, 1e-6) <= 1.0 + 1e-12, name
        assert m.sensitivity >= 1.5, name  # calibration never understates the sensitivity
    with pytest.raises(MechanismError, match="unknown mechanism"):
        calibrated("exponential", 1.0)


def test_the_map_uses_public_parameters_only() -> None:
    m = GaussianMechanism.for_rho(0.1, l2_sensitivity=1.0)
    before = m.privacy_map()
    m.apply(np.full(1, 1e6), SeededBits(1))
    assert m.privacy_map() == before
    assert zcdp_epsilon(before.rho, 1e-6) == claimed_epsilon(m, 1e-6)


@pytest.mark.parametrize(
    ("factory", "error"),
    [
        (lambda: GaussianMechanism(0.0, 1.0), "sigma"),
        (lambda: GaussianMechanism(1.0, -1.0), "l2_sensitivity"),
        (lambda: DiscreteGaussianMechanism(4), "exactly one"),
        (lambda: DiscreteGaussianMechanism(4, l2_sensitivity=1, unit_changes=1), "exactly one"),
        (lambda: DiscreteLaplaceMechanism(0, 1), "scale"),
        (lambda: LaplaceMechanism(1.0, 1.0, dim=0), "dim"),
    ],
)
def test_invalid_public_parameters_are_refused(factory, error: str) -> None:
    with pytest.raises(MechanismError, match=error):
        factory()


def test_answers_must_fit_what_was_priced() -> None:
    m = GaussianMechanism(1.0, 1.0, dim=2)
    with pytest.raises(MechanismError, match="priced for 2"):
        m.apply([1.0, 2.0, 3.0])
    with pytest.raises(MechanismError, match="NaN"):
        m.apply([1.0, float("nan")])
    with pytest.raises(MechanismError, match="integer answers"):
        DiscreteLaplaceMechanism(1, 1).apply(0.5)
    out = m.apply(np.array([1.0, 2.0]), SeededBits(2))
    assert out.shape == (2,) and not out.flags.writeable
    assert isinstance(DiscreteGaussianMechanism(2, unit_changes=1).apply(3, SeededBits(2)), int)


# --------------------------------------------------------------------------- mechanism noise


def test_gaussian_mechanism_noise_is_normal_with_the_claimed_sd() -> None:
    m = GaussianMechanism.for_rho(0.5, l2_sensitivity=2.0)
    noise = m.sample(3.25, N, SeededBits(21)) - 3.25
    assert stats.kstest(noise, "norm", args=(0, m.noise_sd)).pvalue > ALPHA
    assert stats.kstest(noise, "norm", args=(0, 1.1 * m.noise_sd)).pvalue < ALPHA


def test_laplace_mechanism_noise_is_laplace_with_the_claimed_scale() -> None:
    m = LaplaceMechanism.for_epsilon(1.0, l1_sensitivity=0.5)
    noise = m.sample(-7.5, N, SeededBits(22)) + 7.5
    assert stats.kstest(noise, "laplace", args=(0, m.noise_scale)).pvalue > ALPHA
    assert stats.kstest(noise, "laplace", args=(0, 1.1 * m.noise_scale)).pvalue < ALPHA


def test_discrete_gaussian_mechanism_noise_has_the_claimed_pmf() -> None:
    m = DiscreteGaussianMechanism(Fraction(50), unit_changes=1)
    noise = m.sample(10, N, SeededBits(23)) - 10
    assert _chi_square_p(noise, _gaussian_log_weight(50.0)) > ALPHA
    assert _chi_square_p(noise, _gaussian_log_weight(50.0 * 1.21)) < ALPHA


def test_discrete_laplace_mechanism_noise_has_the_claimed_pmf() -> None:
    m = DiscreteLaplaceMechanism.for_epsilon(Fraction(1, 4), l1_sensitivity=1)
    noise = m.sample(0, N, SeededBits(24))
    assert _chi_square_p(noise, _laplace_log_weight(4.0)) > ALPHA
    assert _chi_square_p(noise, _laplace_log_weight(4.4)) < ALPHA


def test_every_coordinate_gets_independent_noise() -> None:
    m = GaussianMechanism(1.0, 1.0, dim=2000)
    out = m.apply(np.zeros(2000), SeededBits(25))
    assert stats.kstest(out, "norm", args=(0, m.noise_sd)).pvalue > ALPHA
    assert abs(np.corrcoef(out[:-1], out[1:])[0, 1]) < 0.1
