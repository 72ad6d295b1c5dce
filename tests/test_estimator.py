import warnings

import numpy as np
import pytest
import torch

from gramfed.platform.datasets import slimkl_authors_split
from gramfed.workers.estimator import GSMPRegressor, NotFittedError
from gramfed.workers.noise import gcv_noise_estimate


def test_fit_predict_recovers_a_periodic_signal(toy_regression) -> None:
    x, y = toy_regression
    model = GSMPRegressor(agents=2, components_per_dim=80, noise=0.01).fit(x, y)
    mean, std = model.predict(x, return_std=True)
    assert mean.shape == std.shape == (len(y),)
    assert np.mean((mean - y) ** 2) < 0.05  # noise variance 0.01 plus smoothing
    assert np.all(std > 0)
    assert np.all(model.weights_ >= 0) and 0 < np.count_nonzero(model.weights_) < 80


def test_fused_prediction_differs_from_pooled_but_is_sane(toy_regression) -> None:
    x, y = toy_regression
    model = GSMPRegressor(agents=2, components_per_dim=80, noise=0.01).fit(x, y)
    pooled = model.predict(x)
    fused = model.predict(x, mode="fused")
    assert not np.allclose(pooled, fused)
    assert np.mean((fused - y) ** 2) < 0.2


def test_get_and_set_params_round_trip() -> None:
    model = GSMPRegressor(agents=3, bits=6)
    params = model.get_params()
    assert params["agents"] == 3 and params["bits"] == 6 and "device" in params
    clone = GSMPRegressor(**params)
    assert clone.get_params() == params
    assert model.set_params(agents=4) is model and model.agents == 4
    with pytest.raises(ValueError, match="invalid parameter 'agent'"):
        model.set_params(agent=2)


def test_predict_before_fit_is_a_clear_error() -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        GSMPRegressor().predict(np.zeros((2, 1)))


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((10, 1)), np.zeros(9), "10 rows but y has 9"),
        (np.full((10, 1), np.nan), np.zeros(10), "X contains NaN"),
        (np.zeros((10, 1)), np.r_[np.zeros(9), np.inf], "y contains NaN or infinite"),
        (np.zeros((0, 1)), np.zeros(0), "non-empty"),
        (np.zeros((10, 1)), np.zeros((10, 2)), "y must be 1-D"),
    ],
)
def test_bad_training_data_is_refused(x: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GSMPRegressor(agents=1).fit(x, y)


def test_too_many_agents_is_refused(toy_regression) -> None:
    x, y = toy_regression
    with pytest.raises(ValueError, match="agents must be between 1 and n/2"):
        GSMPRegressor(agents=40).fit(x, y)


def test_predict_with_wrong_width_is_refused(toy_regression) -> None:
    x, y = toy_regression
    model = GSMPRegressor(agents=1, components_per_dim=10, noise=0.1, admm_max_iter=3).fit(x, y)
    with pytest.raises(ValueError, match="2 features but the model was fitted on 1"):
        model.predict(np.zeros((3, 2)))


def test_gcv_noise_estimate_recovers_known_variance() -> None:
    rng = np.random.default_rng(7)
    t = np.linspace(0, 25, 2000)
    for variance in (0.05, 0.2, 0.5):
        noisy = np.round(np.sin(t)) + np.sqrt(variance) * rng.standard_normal(t.size)
        assert gcv_noise_estimate(noisy).variance == pytest.approx(variance, rel=0.15)


def test_gcv_noise_estimate_flags_a_series_it_finds_no_noise_in() -> None:
    """passengerdata's GCV minimum sits at the limit of least smoothing (its estimate is
    3.6e-6 of var(y)); employmentdata's and a noisy signal's lie inside the search range."""
    passengers = slimkl_authors_split("passengerdata").y_train
    estimate = gcv_noise_estimate(passengers)
    assert estimate.at_least_smoothing
    assert estimate.variance < 1e-5 * np.var(passengers)
    assert not gcv_noise_estimate(slimkl_authors_split("employmentdata").y_train).at_least_smoothing
    noisy = np.sin(np.linspace(0, 25, 500)) + 0.3 * np.random.default_rng(3).standard_normal(500)
    assert not gcv_noise_estimate(noisy).at_least_smoothing


def test_fit_warns_where_the_gcv_noise_sits_at_its_limit() -> None:
    split = slimkl_authors_split("passengerdata")
    settings = {"agents": 1, "components_per_dim": 20, "admm_max_iter": 2}
    with pytest.warns(RuntimeWarning, match="sits at its limit of least smoothing"):
        model = GSMPRegressor(**settings).fit(split.x_train, split.y_train)
    assert model.noise_at_gcv_limit_
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = GSMPRegressor(noise=50.0, **settings).fit(split.x_train, split.y_train)
    assert not fixed.noise_at_gcv_limit_


def test_gcv_noise_estimate_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        gcv_noise_estimate(np.ones(2))
    with pytest.raises(ValueError, match="finite"):
        gcv_noise_estimate(np.array([1.0, np.nan, 2.0, 3.0]))


def _negative_log_evidence(model: GSMPRegressor, x: np.ndarray, y: np.ndarray) -> float:
    cov = model.kernel_.forward(torch.from_numpy(x), torch.from_numpy(x)).numpy()
    cov += model.noise_variance_ * np.eye(len(y))
    _, logdet = np.linalg.slogdet(cov)
    return float(y @ np.linalg.solve(cov, y) + logdet)


def test_learned_noise_never_does_worse_than_the_gcv_noise_it_starts_from(
    toy_regression,
) -> None:
    x, y = toy_regression
    settings = {"agents": 1, "components_per_dim": 30, "scale": 0.01}
    fixed = GSMPRegressor(noise="gcv", **settings).fit(x, y)
    learned = GSMPRegressor(noise="learned", **settings).fit(x, y)
    assert learned.weights_.shape == (30,)  # the noise weight is not a kernel weight
    assert learned.noise_variance_ >= 1e-6 * np.var(y)
    assert learned.noise_variance_ != fixed.noise_variance_
    assert _negative_log_evidence(learned, x, y) <= _negative_log_evidence(fixed, x, y) + 1e-6


def test_unknown_noise_option_is_refused(toy_regression) -> None:
    x, y = toy_regression
    with pytest.raises(ValueError, match="noise must be 'gcv', 'learned' or a number"):
        GSMPRegressor(noise="guess").fit(x, y)
