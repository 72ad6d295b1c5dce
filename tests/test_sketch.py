"""DP kernel density sketches: features, sensitivities, noise scale, merging, queries, uses."""

import math
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from gramfed.platform.sketch_release import release_sketch, release_sketches, sketch_mechanism
from gramfed.privacy.budget import PoolSpec, Rho
from gramfed.privacy.errors import BudgetExceeded
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger
from gramfed.privacy.rng import SeededBits
from gramfed.workers.sketch import discriminant as discriminant_module
from gramfed.workers.sketch import query as query_module
from gramfed.workers.sketch import rff
from gramfed.workers.sketch.accumulate import SketchSums, accumulate, accumulate_shards
from gramfed.workers.sketch.classify import SketchClassifier, accumulate_by_label
from gramfed.workers.sketch.discriminant import SketchDiscriminant
from gramfed.workers.sketch.mmd import monitor
from gramfed.workers.sketch.products import row_stable_mm
from gramfed.workers.sketch.query import SketchQuery, exact_kde, exact_kernel
from gramfed.workers.sketch.sketch import Sketch, merge_all
from gramfed.workers.sketch.spec import SketchMismatch, SketchSpec

POOL = "data:record"
GAUSSIAN = SketchSpec("gaussian", 3, seed=7, bandwidth=1.0, features=512)
LAPLACIAN = SketchSpec("laplacian", 3, seed=7, bandwidth=2.0, repetitions=64, hashes=1, buckets=64)
L2 = SketchSpec("l2", 3, seed=7, bandwidth=2.0, repetitions=64, hashes=2, buckets=64)
ANGULAR = SketchSpec("angular", 3, seed=7, repetitions=64, hashes=3)
SPECS = [GAUSSIAN, LAPLACIAN, L2, ANGULAR]


@pytest.fixture
def gate(tmp_path: Path, key_path: Path) -> Iterator[Gate]:
    with Ledger(tmp_path / "ledger.db", key_path, create=True) as ledger:
        g = Gate(ledger, rng=SeededBits(3), test_rng=True)
        g.create_pool(PoolSpec("data", Rho(4)))
        yield g


@pytest.fixture
def data(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((3000, 3))


def noiseless(sums: SketchSums) -> Sketch:
    """Test-only: a sketch of exact sums (never released, so it cannot be saved)."""
    return Sketch(sums.spec, sums.values, sums.count)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kernel)
def test_merge_of_shard_sketches_equals_sketch_of_union(spec: SketchSpec, data: np.ndarray) -> None:
    shards = np.array_split(data, 4)
    merged = merge_all([noiseless(accumulate(spec, s, device="cpu")) for s in shards])
    union = noiseless(accumulate(spec, data, device="cpu", rows_per_chunk=700))
    assert merged.count == union.count == len(data)
    # Exact for both: integer counts, and RFF sums of fixed-point features (up to the final
    # scaling's one rounding of each total, which sums of shards repeat per shard).
    scale = 1.0 if not spec.is_rff else rff.RandomFourierFeatures(spec, torch.device("cpu")).scale
    unit = scale * 2.0**-rff.FEATURE_GRID_BITS if spec.is_rff else 1.0
    grid = np.round(union.values / unit)
    np.testing.assert_array_equal(np.round(merged.values / unit), grid)
    by_addition = accumulate_shards(spec, shards, device="cpu")
    np.testing.assert_array_equal(np.round(by_addition.values / unit), grid)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seed": 8}, "seed"),
        ({"bandwidth": 1.5}, "bandwidth"),
        ({"features": 256}, "features"),
        ({"projection_dim": 2}, "projection_dim"),
        ({"frequencies": "iid"}, "frequencies"),
    ],
)
def test_merge_refuses_incompatible_sketches(change: dict, field: str, data: np.ndarray) -> None:
    other = SketchSpec(**{**GAUSSIAN.__dict__, **change})
    a = noiseless(accumulate(GAUSSIAN, data[:10], device="cpu"))
    b = noiseless(accumulate(other, data[:10], device="cpu"))
    with pytest.raises(SketchMismatch, match=f"cannot merge incompatible sketches: {field}"):
        a.merge(b)


def test_merge_refuses_another_kernel(data: np.ndarray) -> None:
    a = noiseless(accumulate(LAPLACIAN, data[:10], device="cpu"))
    b = noiseless(accumulate(L2, data[:10], device="cpu"))
    with pytest.raises(SketchMismatch, match="kernel 'laplacian' != 'l2'"):
        a.merge(b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel": "cosine", "input_dim": 2, "seed": 1}, "unknown kernel"),
        ({"kernel": "gaussian", "input_dim": 2, "seed": 1, "features": 8}, "bandwidth"),
        ({"kernel": "gaussian", "input_dim": 2, "seed": -1, "bandwidth": 1.0}, "seed"),
        ({"kernel": "angular", "input_dim": 2, "seed": 1, "bandwidth": 1.0}, "no bandwidth"),
        (
            {
                "kernel": "gaussian",
                "input_dim": 2,
                "seed": 1,
                "bandwidth": 1.0,
                "features": 8,
                "frequencies": "halton",
            },
            "unknown frequencies 'halton'",
        ),
        (
            {
                "kernel": "angular",
                "input_dim": 2,
                "seed": 1,
                "repetitions": 4,
                "hashes": 2,
                "frequencies": "iid",
            },
            "describe RFF sketches",
        ),
        (
            {"kernel": "l2", "input_dim": 2, "seed": 1, "bandwidth": 1.0, "repetitions": 4},
            "hashes",
        ),
        (
            {
                "kernel": "l2",
                "input_dim": 2,
                "seed": 1,
                "bandwidth": 1.0,
                "repetitions": 4,
                "hashes": 1,
                "buckets": 100,
            },
            "power of two",
        ),
    ],
)
def test_bad_specs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SketchSpec(**kwargs)


def test_bad_inputs_are_refused(data: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        accumulate(GAUSSIAN, data[:, :2], device="cpu")
    bad = data[:5].copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        accumulate(LAPLACIAN, bad, device="cpu")
    bad[2, 1] = -np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        accumulate(GAUSSIAN, bad, device="cpu")
    # finite inputs whose sum overflows are still finite inputs
    huge = np.full((4, 3), 1e308)
    assert accumulate(ANGULAR, huge, device="cpu").count == 4


def test_rff_sensitivity_bounds_hold_for_any_record(rng: np.random.Generator) -> None:
    """|phi(x)|_2 = 1 and |phi(x)|_1 <= sqrt(D), also for extreme inputs, and the fixed-point
    features the sums add stay within the stated bounds; a record moves (S, n) by exactly its
    own fixed-point features and 1, so the stated sensitivity is all but attained."""
    x = np.concatenate([rng.standard_normal((2000, 3)) * s for s in (1e-3, 1.0, 1e3)])
    feature = rff.RandomFourierFeatures(GAUSSIAN, torch.device("cpu"))
    inputs = torch.as_tensor(x, dtype=torch.float32)
    phi = feature(inputs).double()
    # |phi|^2 = 1 up to float32 rounding (8 sqrt(2) u + 32 u^2 < 2^-20)
    assert float((phi.square().sum(1) - 1).abs().max()) <= 2.0**-20
    assert float(phi.abs().sum(1).max()) <= math.sqrt(GAUSSIAN.features) + 1e-4
    units = rff.to_fixed_point(feature.unscaled(inputs)).double()  # (2, n, D / 2)
    q = torch.cat((units[0], units[1]), 1) * (feature.scale * 2.0**-rff.FEATURE_GRID_BITS)
    assert float(q.square().sum(1).max()) <= 1 + 2.0**-11
    assert float(q.abs().sum(1).max()) <= rff.l1_sensitivity(GAUSSIAN.features) - 1
    base = accumulate(GAUSSIAN, x[:-1], device="cpu")
    more = accumulate(GAUSSIAN, x, device="cpu")
    moved = np.append(more.values - base.values, more.count - base.count)
    np.testing.assert_allclose(moved[:-1], q[-1].numpy(), rtol=0, atol=1e-12)
    assert math.sqrt(2) * (1 - 2.0**-11) <= np.linalg.norm(moved) <= rff.L2_SENSITIVITY


def test_rff_features_come_in_cos_sin_pairs() -> None:
    """The second half of the features is the sine of the first half's arguments, so the
    features' inner product is the mean of cos(w_p'(x - y)) over the D / 2 frequencies."""
    feature = rff.RandomFourierFeatures(GAUSSIAN, torch.device("cpu"))
    x = torch.randn(50, 3, dtype=torch.float32)
    pairs = GAUSSIAN.features // 2
    arguments = x.double() @ feature.weights[:, :pairs].double()
    cos, sin = feature.unscaled(x).double()
    torch.testing.assert_close(cos, torch.cos(arguments), atol=1e-5, rtol=0)
    torch.testing.assert_close(sin, torch.sin(arguments), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="features must be even"):
        SketchSpec("gaussian", 3, seed=1, bandwidth=1.0, features=63)


def test_orthogonal_frequencies_are_orthogonal_blocks_with_stratified_chi_radii() -> None:
    """Blocks of d' orthonormal directions (a last, partial block too); the p-th radius, times
    h, lies in the p-th of D / 2 equal-probability strata of the chi law on d' degrees."""
    from scipy.stats import chi

    spec = SketchSpec("gaussian", 3, seed=2, bandwidth=0.5, features=22)  # 11 = 3 + 3 + 3 + 2
    w = rff.frequencies(spec)
    assert w.shape == (3, 11)
    radii = np.linalg.norm(w, axis=0)
    for start in range(0, 11, 3):
        block = w[:, start : start + 3] / radii[start : start + 3]
        np.testing.assert_allclose(block.T @ block, np.eye(block.shape[1]), atol=1e-12)
    strata = chi.cdf(radii * spec.bandwidth, 3) * 11
    np.testing.assert_array_equal(np.floor(strata + 1e-9), np.arange(11))
    assert spec.frequencies == "orthogonal" and "(orthogonal)" in spec.describe()


def test_both_frequency_designs_estimate_the_kernel_without_bias() -> None:
    """Over 400 seeds, the mean of phi(x)' phi(y) is k(x, y) within 4 standard errors, for
    pairs near and far; each design's spread is that of its own seeds."""
    x = np.array([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [1.0, 1.0, -1.0], [2.0, -1.5, 0.5]])
    exact = np.exp(-np.sum(x[1:] ** 2, axis=1) / 2)
    for design in ("orthogonal", "iid"):
        estimates = []
        for seed in range(400):
            spec = SketchSpec(
                "gaussian", 3, seed=seed, bandwidth=1.0, features=8, frequencies=design
            )
            phi = (
                rff.RandomFourierFeatures(spec, torch.device("cpu"))(
                    torch.as_tensor(x, dtype=torch.float32)
                )
                .double()
                .numpy()
            )
            estimates.append(phi[1:] @ phi[0])
        estimates = np.array(estimates)
        error = estimates.std(axis=0, ddof=1) / math.sqrt(len(estimates))
        assert np.all(np.abs(estimates.mean(axis=0) - exact) <= 4 * error), design


def test_orthogonal_frequencies_approximate_the_kde_better_than_iid(
    data: np.ndarray, rng: np.random.Generator
) -> None:
    queries = rng.standard_normal((200, 3))
    spec = SketchSpec("gaussian", 3, seed=0, bandwidth=1.0, features=256)
    exact = exact_kde(exact_kernel(spec), data, queries, device="cpu")
    mean_error = {}
    for design in ("orthogonal", "iid"):
        errors = []
        for seed in range(8):
            s = replace(spec, seed=seed, frequencies=design)
            estimate = SketchQuery(noiseless(accumulate(s, data)), device="cpu").density(queries)
            errors.append(float((estimate - exact).abs().mean()))
        mean_error[design] = np.mean(errors)
    assert mean_error["orthogonal"] < 0.5 * mean_error["iid"]


@pytest.mark.parametrize("design", ["orthogonal", "iid"])
def test_approximation_term_covers_the_feature_error_of_either_design(
    design: str, data: np.ndarray, rng: np.random.Generator
) -> None:
    """Noise-free sketches over 20 seeds: the error stays inside the approximation term at
    confidence 0.9 for (far) more than 90% of the queries; the orthogonal design's term is the
    iid one times sqrt(min(d', D / 2) + 1)."""
    queries = rng.standard_normal((100, 3))
    spec = SketchSpec("gaussian", 3, seed=0, bandwidth=1.0, features=64, frequencies=design)
    exact = exact_kde(exact_kernel(spec), data, queries, device="cpu")
    term = query_module.rff_approximation(spec, 0.1)
    iid_term = math.sqrt(4 * math.log(4 / 0.1) / 64)
    assert term == pytest.approx(iid_term * (2.0 if design == "orthogonal" else 1.0))
    covered = []
    for seed in range(20):
        s = replace(spec, seed=seed)
        estimate = SketchQuery(noiseless(accumulate(s, data)), device="cpu").density(queries)
        covered.append(float(((estimate - exact).abs() <= term).double().mean()))
    assert min(covered) >= 0.9


@pytest.mark.parametrize("spec", [LAPLACIAN, L2, ANGULAR], ids=lambda s: s.kernel)
def test_lsh_record_changes_exactly_one_bucket_per_repetition(
    spec: SketchSpec, data: np.ndarray
) -> None:
    base = accumulate(spec, data[:-1], device="cpu")
    more = accumulate(spec, data, device="cpu")
    diff = more.values - base.values
    assert diff.sum() == spec.repetitions and set(np.unique(diff)) <= {0, 1}
    assert diff.reshape(spec.repetitions, spec.buckets).sum(1).tolist() == [1] * spec.repetitions


@pytest.mark.parametrize(
    ("spec", "noise"),
    [(GAUSSIAN, "gaussian"), (GAUSSIAN, "laplace"), (L2, "gaussian"), (L2, "laplace")],
    ids=["rff-gaussian", "rff-laplace", "lsh-gaussian", "lsh-laplace"],
)
def test_released_noise_has_the_claimed_scale(
    spec: SketchSpec, noise: str, gate: Gate, data: np.ndarray
) -> None:
    budget = {"rho": Fraction(1, 2)} if noise == "gaussian" else {"epsilon": 1.0}
    exact = accumulate(spec, data, device="cpu")
    _, sketch = release_sketch(
        gate, POOL, spec, lambda: exact, noise=noise, requester="test", **budget
    )
    residual = np.append(sketch.values - exact.values, sketch.count - exact.count)
    claimed = sketch.noise.variance
    # The sample variance of k draws is within 5 standard errors (sqrt(2/k), or sqrt(5/k)
    # for Laplace's heavier tails) of the claimed variance.
    k = residual.size
    spread = math.sqrt((2.0 if noise == "gaussian" else 5.0) / k)
    assert abs(residual.var() / claimed - 1.0) < 5 * spread
    assert abs(residual.mean()) < 5 * math.sqrt(claimed / k)  # unbiased: no floor/round bias
    if not spec.is_rff:
        assert sketch.values.dtype == np.int64


def test_gaussian_release_is_cheaper_in_noise_than_laplace_at_equal_epsilon() -> None:
    from gramfed.privacy.accountant import rho_for_epsilon

    gaussian = sketch_mechanism(GAUSSIAN, rho=rho_for_epsilon(1.0, 1e-6))
    laplace = sketch_mechanism(GAUSSIAN, noise="laplace", epsilon=1.0)
    assert gaussian.noise_sd**2 < 2 * laplace.noise_scale**2 / 10


def test_release_states_cost_and_unit_and_refuses_over_budget(gate: Gate, data: np.ndarray) -> None:
    release, sketch = release_sketch(
        gate, POOL, GAUSSIAN, lambda: accumulate(GAUSSIAN, data), rho=3, requester="t"
    )
    assert sketch.rho == release.rho <= 3 and sketch.unit == "record"
    assert sketch.provenance[0].ledger_id == release.ledger_id
    assert "zCDP" in sketch.privacy_statement() and "record" in sketch.privacy_statement()
    touched = []
    with pytest.raises(BudgetExceeded):
        release_sketch(
            gate,
            POOL,
            GAUSSIAN,
            lambda: touched.append(1) or accumulate(GAUSSIAN, data),
            rho=3,
            requester="t",
        )
    assert touched == []  # the data was never read


def test_merged_cost_is_parallel_across_pools_and_sequential_within(
    gate: Gate, data: np.ndarray
) -> None:
    gate.create_pool(PoolSpec("other", Rho(4)))

    def part(pool: str, x: np.ndarray) -> Sketch:
        return release_sketch(
            gate,
            pool,
            GAUSSIAN,
            lambda: accumulate(GAUSSIAN, x),
            rho=Fraction(1, 4),
            requester="t",
        )[1]

    a, b, c = part(POOL, data[:100]), part("other:record", data[100:200]), part(POOL, data[200:])
    assert a.merge(b).rho == max(a.rho, b.rho) <= Fraction(1, 4)
    assert a.merge(b).merge(c).rho == a.rho + c.rho
    assert a.merge(b).noise.variance == pytest.approx(a.noise.variance + b.noise.variance)


def test_rff_scan_norms_equal_those_of_the_whole_feature_rows(
    gate: Gate, data: np.ndarray, rng: np.random.Generator
) -> None:
    """The query pass reduces the cosine and sine halves separately; its L2 norms and, under
    Laplace noise, largest absolute values are those of the unscaled (n, D) feature rows."""
    _, sketch = release_sketch(
        gate,
        POOL,
        GAUSSIAN,
        lambda: accumulate(GAUSSIAN, data),
        noise="laplace",
        epsilon=1.0,
        requester="t",
    )
    engine = SketchQuery(sketch, device="cpu")
    queries = rng.standard_normal((2500, 3))  # two blocks of queries (2,036 rows each)
    y = torch.as_tensor(queries, dtype=torch.float32)
    rows = engine.feature(y) / engine.feature.scale
    raw, l2, linf = engine._rff_scan(y.double(), norms=True)
    assert l2 is not None and linf is not None
    torch.testing.assert_close(l2, rows.norm(dim=1).double(), rtol=1e-6, atol=0)
    torch.testing.assert_close(linf, rows.abs().amax(1).double(), rtol=1e-6, atol=0)
    expected = rows.double() @ torch.as_tensor(sketch.values * engine.feature.scale)
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kernel)
def test_estimates_track_the_exact_kde_within_the_stated_bound(
    spec: SketchSpec, gate: Gate, data: np.ndarray, rng: np.random.Generator
) -> None:
    queries = rng.standard_normal((200, 3))
    exact = exact_kde(exact_kernel(spec), data, queries, device="cpu")
    _, sketch = release_sketch(
        gate, POOL, spec, lambda: accumulate(spec, data), rho=Fraction(1, 2), requester="t"
    )
    query = SketchQuery(sketch, device="cpu")
    error = (query.density(queries) - exact).abs()
    bound = query.error_bound(queries, confidence=0.95)
    assert float((error <= bound).double().mean()) >= 0.95
    assert float(error.mean()) < 0.05 < float(exact.mean())
    together = query.density_with_bound(queries, confidence=0.95)
    torch.testing.assert_close(together[0], query.density(queries))
    torch.testing.assert_close(together[1], bound)
    with pytest.raises(ValueError, match="confidence must lie in"):
        query.density_with_bound(queries, confidence=1.0)


@pytest.mark.parametrize("function", ["cos", "sin"])
def test_float32_cosines_stay_within_the_error_the_bound_assumes(function: str) -> None:
    """The query bound and the RFF sensitivity both take float32 cos and sin within 4u."""
    z = np.random.default_rng(4).uniform(-1e4, 1e4, 10**6).astype(np.float32)
    ours = getattr(torch, function)(torch.from_numpy(z)).numpy()
    error = np.abs(ours - getattr(np, function)(z.astype(np.float64)))
    assert error.max() <= query_module.COS_ULPS * query_module.UNIT_ROUNDOFF


@pytest.mark.parametrize("projection", [None, 3])
def test_rff_bound_covers_the_float32_rounding_of_queries(
    projection: int | None, data: np.ndarray, rng: np.random.Generator
) -> None:
    spec = SketchSpec(
        "gaussian", 3, seed=5, bandwidth=0.3, features=2048, projection_dim=projection
    )
    sketch = noiseless(accumulate(spec, data))
    engine = SketchQuery(sketch, device="cpu")
    # Queries from the data's scale out to |y| / h ~ 3e4, where float32 arguments lose digits.
    queries = rng.standard_normal((300, 3)) * np.logspace(0, 4, 300)[:, None]
    feature = engine.feature
    z = torch.as_tensor(queries)
    if feature.projection is not None:
        z = z @ feature.projection.double()
    arguments = z @ feature.weights.double()
    exact = torch.cat([arguments.cos(), arguments.sin()], 1) @ torch.as_tensor(
        sketch.values * feature.scale
    )
    error = (engine.density(queries) - exact / sketch.count).abs()
    # Noise-free, so the bound is the approximation term plus the rounding term alone.
    beta = 0.05
    approximation = query_module.rff_approximation(sketch.spec, beta)
    rounding = engine.error_bound(queries, 1 - beta) - approximation
    assert bool((error <= rounding).all())
    # Far queries do lose precision in float32 (the term is not covering a zero error).
    assert float(error[-30:].max()) > 100 * float(error[:30].max())
    assert float(rounding[:30].max()) < 1e-3  # while the term stays small near the data


def test_projection_keeps_the_estimate_close(data: np.ndarray, rng: np.random.Generator) -> None:
    wide = np.concatenate([data, rng.standard_normal((len(data), 29)) * 0.1], axis=1)
    queries = wide[:100] + 0.1
    spec = SketchSpec("gaussian", 32, seed=1, bandwidth=2.0, features=1024, projection_dim=16)
    exact = exact_kde(exact_kernel(spec), wide, queries, device="cpu")
    estimate = SketchQuery(noiseless(accumulate(spec, wide)), device="cpu").density(queries)
    assert float((estimate - exact).abs().mean()) < 0.1 * float(exact.mean())


def test_classification_by_class_densities_costs_one_release(
    gate: Gate, rng: np.random.Generator
) -> None:
    x = np.concatenate([rng.normal(-1.5, 1, (1500, 3)), rng.normal(1.5, 1, (1500, 3))])
    y = np.repeat(["a", "b"], 1500)
    spent_before = gate.remaining(POOL)
    _, sketches = release_sketches(
        gate,
        POOL,
        GAUSSIAN,
        ["a", "b"],
        lambda: accumulate_by_label(GAUSSIAN, x, y, ["a", "b"]),
        rho=Fraction(1, 10),
        requester="t",
    )
    assert spent_before - gate.remaining(POOL) <= Fraction(1, 10)
    assert sketches["a"].provenance == sketches["b"].provenance
    test = np.concatenate([rng.normal(-1.5, 1, (300, 3)), rng.normal(1.5, 1, (300, 3))])
    predicted = SketchClassifier(sketches, device="cpu").predict(test)
    assert np.mean(predicted == np.repeat(["a", "b"], 300)) > 0.9
    with pytest.raises(ValueError, match="not among the declared classes"):
        accumulate_by_label(GAUSSIAN, x, y, ["a"])


def test_rows_are_grouped_by_label_name(data: np.ndarray) -> None:
    # Integer and string labels of the same name are one class, in any order of the rows.
    y = np.array([1, "1", 2] * 100, dtype=object)
    sums = accumulate_by_label(ANGULAR, data[:300], y, ["1", "2", "3"])
    ones = np.flatnonzero(np.arange(300) % 3 != 2)
    assert sums["1"].count == 200 and sums["3"].count == 0
    np.testing.assert_array_equal(sums["1"].values, accumulate(ANGULAR, data[ones]).values)
    np.testing.assert_array_equal(sums["2"].values, accumulate(ANGULAR, data[2:300:3]).values)
    with pytest.raises(ValueError, match="rows but 299 labels"):
        accumulate_by_label(ANGULAR, data[:300], y[:299], ["1", "2"])


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint16, np.uint64])
def test_integer_labels_are_counted_as_their_names(data: np.ndarray, dtype: type) -> None:
    """Integer labels take a counting path instead of a sort: same classes as their names,
    with gaps, negative values, and a range too wide to count (the sort again)."""
    low, gap = (-100, 200) if np.issubdtype(dtype, np.signedinteger) else (3, 250)
    codes = np.array([low, low + gap, low + 2] * 100)
    y = codes.astype(dtype)
    names = [str(v) for v in (low, low + 2, low + gap)]
    by_name = accumulate_by_label(ANGULAR, data[:300], codes.astype(str), names)
    for labels in (y, y.reshape(-1, 1)):
        counted = accumulate_by_label(ANGULAR, data[:300], labels, names)
        for name in names:
            np.testing.assert_array_equal(counted[name].values, by_name[name].values)
    if dtype in (np.int64, np.uint64):
        wide = y.copy()
        wide[0] = np.iinfo(dtype).max
        sums = accumulate_by_label(ANGULAR, data[:300], wide, [*names, str(wide[0])])
        assert sums[str(wide[0])].count == 1 and sums[names[0]].count == 99


@pytest.mark.parametrize("spec", [GAUSSIAN, L2], ids=lambda s: s.kernel)
def test_class_sums_from_one_pass_equal_each_class_on_its_own(
    spec: SketchSpec, data: np.ndarray, rng: np.random.Generator
) -> None:
    """Interleaved labels, chunks and sum blocks that cut across classes, an empty class."""
    y = rng.choice(["a", "b", "c"], size=len(data), p=[0.6, 0.3, 0.1])
    sums = accumulate_by_label(spec, data, y, ["a", "b", "c", "empty"], rows_per_chunk=700)
    assert sums["empty"].count == 0 and not sums["empty"].values.any()
    for label in "abc":
        alone = accumulate(spec, data[y == label], device="cpu")
        assert sums[label].count == alone.count == int((y == label).sum())
        np.testing.assert_array_equal(sums[label].values, alone.values)  # exact sums, both


@pytest.mark.parametrize("spec", [GAUSSIAN, ANGULAR], ids=lambda s: s.kernel)
def test_rank_keeps_the_leading_public_directions(
    spec: SketchSpec, rng: np.random.Generator
) -> None:
    public = rng.standard_normal((60, 3))
    sums = accumulate_by_label(spec, public, np.repeat(["a", "b"], 30), ["a", "b"])
    exact = {c: noiseless(s) for c, s in sums.items()}
    full = SketchClassifier(exact, public=public, device="cpu").values
    ranked = [SketchClassifier(exact, public=public, rank=k, device="cpu").values for k in (1, 5)]
    # Projections on nested subspaces: the norm grows with the rank, up to the full span's.
    norms = [float(v.norm()) for v in (*ranked, full)]
    assert norms[0] < norms[1] < norms[2] * (1 + 1e-5)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        SketchClassifier(exact, rank=5, device="cpu")


@pytest.mark.parametrize("spec", [GAUSSIAN, ANGULAR, L2], ids=lambda s: s.kernel)
def test_public_span_keeps_sums_of_public_rows_and_removes_noise_orthogonal_to_them(
    spec: SketchSpec, rng: np.random.Generator
) -> None:
    public = rng.standard_normal((60, 3))
    labels = np.repeat(["a", "b"], 30)
    sums = accumulate_by_label(spec, public, labels, ["a", "b"], device="cpu")
    exact = {c: noiseless(s) for c, s in sums.items()}
    plain = SketchClassifier(exact, device="cpu")
    denoised = SketchClassifier(exact, public=public, device="cpu")
    # Sums of public rows lie in the span of their features: the projection leaves them be.
    torch.testing.assert_close(denoised.values, plain.values, rtol=1e-4, atol=1e-3)
    dtype = np.float64 if spec.is_rff else np.int64
    noise = {c: Sketch(spec, rng.normal(0, 50, spec.size).astype(dtype), 30.0) for c in "ab"}
    raw = SketchClassifier(noise, device="cpu").values
    kept = SketchClassifier(noise, public=public, device="cpu").values
    # At most 60 of the `size` noise dimensions survive (at most 60 of 512 here).
    assert float(kept.norm()) < 0.5 * float(raw.norm())
    with pytest.raises(ValueError, match="shape"):
        SketchClassifier(exact, public=public[:, :2], device="cpu")
    with pytest.raises(ValueError, match="at least one public row"):
        SketchClassifier(exact, public=public[:0], device="cpu")


def test_prior_classification_needs_no_positive_class_count(rng: np.random.Generator) -> None:
    x = np.concatenate([rng.normal(-1.5, 1, (500, 3)), rng.normal(1.5, 1, (500, 3))])
    sums = accumulate_by_label(ANGULAR, x, np.repeat(["a", "b"], 500), ["a", "b"])
    # A noisy count below zero (LSH counts carry the buckets' noise) leaves the joint
    # densities' argmax untouched: it never divides by a class count.
    sketches = {c: Sketch(ANGULAR, s.values, -5.0 if c == "b" else 1000.0) for c, s in sums.items()}
    queries = np.concatenate([rng.normal(-1.5, 1, (100, 3)), rng.normal(1.5, 1, (100, 3))])
    predicted = SketchClassifier(sketches, prior=True, device="cpu").predict(queries)
    assert np.mean(predicted == np.repeat(["a", "b"], 100)) > 0.8
    with pytest.raises(SketchMismatch, match=r"classes \['b'\] have a non-positive noisy count"):
        SketchClassifier(sketches, device="cpu")
    negative = {c: Sketch(ANGULAR, s.values, -10.0) for c, s in sketches.items()}
    model = SketchClassifier(negative, prior=True, device="cpu")
    assert np.array_equal(model.predict(queries), predicted)
    with pytest.raises(SketchMismatch, match="sum to -20"):
        model.scores(queries)


def three_classes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.array([[-2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.5, 0.0]])
    y = np.repeat(["a", "b", "c"], n)
    return centres[np.repeat([0, 1, 2], n)] + rng.standard_normal((3 * n, 3)), y


@pytest.mark.parametrize("features", [512, 64])  # more features than the 120 public rows, fewer
def test_gaussian_class_densities_are_lda_in_the_public_coordinates(
    rng: np.random.Generator, features: int
) -> None:
    spec = replace(GAUSSIAN, features=features)
    x, y = three_classes(rng, 200)
    public, _ = three_classes(rng, 40)
    sums = accumulate_by_label(spec, x, y, ["a", "b", "c"], device="cpu")
    model = SketchDiscriminant(
        {c: noiseless(s) for c, s in sums.items()},
        public=public,
        rank=8,
        floor=0.5,
        em_steps=0,
        device="cpu",
    )
    # The same rule computed row by row: each training row's coordinates in the public span,
    # class means of those, the public covariance less the between-class one, floored.
    feature = rff.RandomFourierFeatures(spec, torch.device("cpu"))
    phi = feature(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
    p = feature(torch.as_tensor(public, dtype=torch.float32)).double().numpy()
    values, vectors = np.linalg.eigh(p @ p.T)
    basis = (vectors[:, -8:] / np.sqrt(values[-8:])).T @ p
    coords = phi @ basis.T
    means = np.stack([coords[y == c].mean(0) for c in "abc"], 1)
    weights = np.full(3, 1 / 3)
    centred = means - means.mean(1, keepdims=True)
    total = np.cov(p @ basis.T, rowvar=False)
    w_values, w_vectors = np.linalg.eigh(total - (centred * weights) @ centred.T)
    lowest = 0.5 * np.linalg.eigvalsh(total).mean()
    precision = (w_vectors / np.maximum(w_values, lowest)) @ w_vectors.T
    queries = x[::7]
    q = feature(torch.as_tensor(queries, dtype=torch.float32)).double().numpy() @ basis.T
    expected = q @ precision @ means - 0.5 * np.sum(means * (precision @ means), 0) + np.log(1 / 3)
    np.testing.assert_allclose(model.scores(queries).numpy(), expected, rtol=1e-3, atol=1e-3)
    assert np.mean(model.predict(x) == y) > 0.8  # the Bayes rule's accuracy is about 0.9


def release_three_classes(
    gate: Gate, x: np.ndarray, y: np.ndarray, rho: Fraction
) -> dict[str, Sketch]:
    """The gaussian class sketches of ``three_classes`` rows, released together at ``rho``."""
    _, sketches = release_sketches(
        gate,
        POOL,
        GAUSSIAN,
        ["a", "b", "c"],
        lambda: accumulate_by_label(GAUSSIAN, x, y, ["a", "b", "c"]),
        rho=rho,
        requester="t",
    )
    return sketches


def test_gaussian_class_densities_from_a_release(gate: Gate, rng: np.random.Generator) -> None:
    x, y = three_classes(rng, 1000)
    public, _ = three_classes(rng, 100)
    sketches = release_three_classes(gate, x, y, Fraction(1, 50))
    test, truth = three_classes(rng, 300)
    model = SketchDiscriminant(sketches, public=public, rank=20, device="cpu")
    density = SketchClassifier(sketches, prior=True, public=public, rank=20, device="cpu")
    accuracy = np.mean(model.predict(test) == truth)
    assert accuracy > 0.85
    assert accuracy >= np.mean(density.predict(test) == truth) - 0.02


def test_public_rows_refine_noisy_class_means_and_leave_exact_ones(
    gate: Gate, rng: np.random.Generator
) -> None:
    """EM on unlabelled public rows moves means that a noisy release leaves uncertain towards
    the classes' own rows (accuracy up over 8 releases); means from exact sums stay put."""
    x, y = three_classes(rng, 300)
    public, _ = three_classes(rng, 150)
    test, truth = three_classes(rng, 300)
    exact = {
        c: noiseless(s) for c, s in accumulate_by_label(GAUSSIAN, x, y, ["a", "b", "c"]).items()
    }
    fixed = [SketchDiscriminant(exact, public=public, rank=10, em_steps=k) for k in (0, 10)]
    torch.testing.assert_close(fixed[0].scores(test), fixed[1].scores(test))
    gains = []
    for _ in range(8):
        sketches = release_three_classes(gate, x, y, Fraction(1, 400))
        plain, refined = (
            np.mean(
                SketchDiscriminant(sketches, public=public, rank=10, em_steps=k).predict(test)
                == truth
            )
            for k in (0, 10)
        )
        gains.append(refined - plain)
    assert np.mean(gains) > 0.02 and min(gains) > -0.05
    with pytest.raises(ValueError, match="em_steps must be a non-negative integer"):
        SketchDiscriminant(exact, public=public, rank=10, em_steps=-1)


def test_em_steps_solve_the_posterior_mode_systems_of_the_docstring() -> None:
    """Each step, in the precision's eigenbasis, equals the dense update
    mu_c = (R_c Sigma^-1 + I / v_c)^-1 (Sigma^-1 Z r_c + m_c / v_c); a class of zero noise
    keeps its released mean throughout."""
    gen = torch.Generator().manual_seed(0)
    k, classes, m = 6, 3, 50
    a = torch.randn(k, k, dtype=torch.float64, generator=gen)
    values, vectors = torch.linalg.eigh(a @ a.T + torch.eye(k, dtype=torch.float64))
    precision = (vectors / values) @ vectors.T
    released = torch.randn(k, classes, dtype=torch.float64, generator=gen)
    variance = torch.tensor([0.1, 0.5, 0.0], dtype=torch.float64)
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    public = torch.randn(k, m, dtype=torch.float64, generator=gen)
    means = released
    for _ in range(5):
        coefficients = precision @ means
        claimed = torch.softmax(
            public.T @ coefficients - 0.5 * (means * coefficients).sum(0) + weights.log(), 1
        )
        dense = []
        for c in range(classes):
            if variance[c] == 0:
                dense.append(released[:, c])
                continue
            system = claimed[:, c].sum() * precision + torch.eye(k) / variance[c]
            target = precision @ public @ claimed[:, c] + released[:, c] / variance[c]
            dense.append(torch.linalg.solve(system, target))
        means = torch.stack(dense, 1)
    refined = discriminant_module._refined_means(
        released, variance, vectors, 1 / values, weights, public, 5
    )
    torch.testing.assert_close(refined, means)


def test_gaussian_class_densities_refuse_what_they_cannot_use(rng: np.random.Generator) -> None:
    x, y = three_classes(rng, 50)
    sums = accumulate_by_label(GAUSSIAN, x, y, ["a", "b", "c"], device="cpu")
    exact = {c: noiseless(s) for c, s in sums.items()}
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        SketchDiscriminant(exact, public=x, rank=0)
    with pytest.raises(ValueError, match="floor must be positive"):
        SketchDiscriminant(exact, public=x, rank=5, floor=0.0)
    with pytest.raises(ValueError, match="at least two public rows"):
        SketchDiscriminant(exact, public=x[:1], rank=5)
    with pytest.raises(ValueError, match="shape"):
        SketchDiscriminant(exact, public=x[:, :2], rank=5)
    with pytest.raises(ValueError, match="at least two classes"):
        SketchDiscriminant({"a": exact["a"]}, public=x, rank=5)
    empty = {**exact, "c": Sketch(GAUSSIAN, exact["c"].values, -1.0)}
    with pytest.raises(SketchMismatch, match=r"classes \['c'\] have a non-positive noisy count"):
        SketchDiscriminant(empty, public=x, rank=5)
    lsh = accumulate_by_label(ANGULAR, x, y, ["a", "b", "c"])
    with pytest.raises(SketchMismatch, match="need gaussian"):
        SketchDiscriminant({c: noiseless(s) for c, s in lsh.items()}, public=x, rank=5)


PROJECTED = SketchSpec("gaussian", 3, seed=7, bandwidth=1.0, features=512, projection_dim=2)


@pytest.mark.parametrize("spec", [GAUSSIAN, PROJECTED, L2], ids=["rff", "projected", "l2"])
def test_build_is_exact_whatever_the_chunking(data: np.ndarray, spec: SketchSpec) -> None:
    """The sums are the same to the last bit for any chunking and thread count: a record's
    contribution depends on that record alone (``products``: BLAS rounds a product's rows by
    its shape, which chunking changes)."""
    whole = accumulate(spec, data, device="cpu").values
    threads = torch.get_num_threads()
    try:
        for rows, count in ((1, 1), (7, 2), (1000, 1), (5000, 2)):
            torch.set_num_threads(count)
            chunked = accumulate(spec, data, device="cpu", rows_per_chunk=rows).values
            np.testing.assert_array_equal(chunked, whole)
    finally:
        torch.set_num_threads(threads)


def test_row_stable_products_round_every_row_alike() -> None:
    """Each row of ``row_stable_mm`` is the same whatever the rows beside it and their number,
    and equal to the plain product up to float32 rounding."""
    generator = torch.Generator().manual_seed(0)
    for dims, width in ((3, 256), (13, 64), (32, 2048)):
        x = torch.randn(3000, dims, generator=generator)
        matrix = torch.randn(dims, width, generator=generator)
        whole = row_stable_mm(x, matrix)
        for rows in (1, 7, 300, 1000):
            parts = [row_stable_mm(x[s : s + rows], matrix) for s in range(0, len(x), rows)]
            torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
        reordered = torch.randperm(len(x), generator=generator)
        torch.testing.assert_close(
            row_stable_mm(x[reordered], matrix), whole[reordered], rtol=0, atol=0
        )
        torch.testing.assert_close(whole, x @ matrix, rtol=1e-5, atol=1e-4)


def test_rff_sums_are_those_of_the_fixed_point_features(data: np.ndarray) -> None:
    """The build's sums are the exact sums of the grid features, within half a grid unit per
    record of the float features' sums."""
    feature = rff.RandomFourierFeatures(GAUSSIAN, torch.device("cpu"))
    halves = feature.unscaled(torch.as_tensor(data, dtype=torch.float32))
    grid = rff.to_fixed_point(halves).double().sum(1).reshape(-1)  # float64: exact, small sums
    unit = feature.scale * 2.0**-rff.FEATURE_GRID_BITS
    whole = accumulate(GAUSSIAN, data, device="cpu").values
    np.testing.assert_array_equal(whole, grid.numpy() * unit)
    # The grid moves each unscaled feature by at most half a unit.
    exact = feature(torch.as_tensor(data, dtype=torch.float32)).double().sum(0).numpy()
    assert np.abs(whole - exact).max() <= len(data) * unit / 2


def test_fixed_point_sums_stay_exact_past_float32s_integers() -> None:
    """FIXED_POINT_ROWS rows of the grid's largest value reach 2^24 units, where float32 stops
    holding every integer; one more unit must still count, so no float32 partial sum may run
    over more rows than that, however the rows are chunked."""
    spec = SketchSpec("gaussian", 1, seed=0, bandwidth=1.0, features=2)
    w = float(rff.frequencies(spec)[0, 0])
    top = np.zeros((rff.FIXED_POINT_ROWS, 1))  # cos 0 = 1: 2^12 units each
    one_unit = np.array([[(math.pi / 2 - 2.0**-rff.FEATURE_GRID_BITS) / w]])  # cos = 2^-12
    unit = rff.RandomFourierFeatures(spec, torch.device("cpu")).scale * 2.0**-rff.FEATURE_GRID_BITS
    for rows in (None, rff.FIXED_POINT_ROWS + 1, 10**5):
        sums = accumulate(spec, np.vstack([top, one_unit]), device="cpu", rows_per_chunk=rows)
        assert round(sums.values[0] / unit) == 2**24 + 1


def test_monitor_keeps_its_level_and_detects_a_shift(gate: Gate, rng: np.random.Generator) -> None:
    spec = SketchSpec("gaussian", 3, seed=2, bandwidth=1.5, features=256)
    reference = rng.standard_normal((20000, 3))
    _, sketch = release_sketch(
        gate, POOL, spec, lambda: accumulate(spec, reference), rho=1, requester="t"
    )
    same = [monitor(sketch, rng.standard_normal((400, 3)), seed=i).alarm for i in range(20)]
    shifted = [monitor(sketch, rng.standard_normal((400, 3)) + 0.3, seed=i).alarm for i in range(5)]
    assert sum(same) <= 4  # nominal 5%: 1 of 20 expected; 5 or more has probability 0.003
    assert sum(shifted) >= 4
    lsh = noiseless(accumulate(L2, reference[:100]))
    with pytest.raises(ValueError, match="needs a gaussian"):
        monitor(lsh, reference[:10])
