import numpy as np
import pytest
import torch

from gramfed.platform.datasets import slimkl_authors_split
from gramfed.workers.admm import ADMMAgent, ADMMOptions, ConsensusADMM
from gramfed.workers.estimator import GSMPRegressor
from gramfed.workers.gram import SubKernelGram
from gramfed.workers.kernels.gsmp import GSMPGrid, GSMPKernel
from gramfed.workers.sca import ConsensusPenalty, LocalProblem, SCAOptions
from gramfed.workers.transport import InProcessTransport


def test_admm_with_one_agent_equals_centralised_solver(toy_regression) -> None:
    x, y = toy_regression
    grid = GSMPGrid.default(1, per_dim=40, scale=0.01)
    tight = SCAOptions(max_iter=500, tol=1e-11)
    gram = SubKernelGram(GSMPKernel(grid), torch.from_numpy(x))
    problem = LocalProblem(gram, torch.from_numpy(y), 0.05, tight)
    central = problem.solve(
        torch.zeros(problem.size, dtype=torch.float64),
        ConsensusPenalty.none(problem.size, problem.gram.device),
    )
    agent = ADMMAgent(problem, ADMMOptions())
    result = ConsensusADMM(InProcessTransport([agent]), problem.size, ADMMOptions()).run()
    assert result.converged
    torch.testing.assert_close(result.weights, central.weights, rtol=1e-4, atol=1e-6)


def test_agents_exchange_only_bytes(toy_regression) -> None:
    x, y = toy_regression
    seen: list[type] = []

    class Recording(InProcessTransport):
        def round(self, frame: bytes) -> list[bytes]:
            replies = super().round(frame)
            seen.extend(type(m) for m in [frame, *replies])
            return replies

    grid = GSMPGrid.default(1, per_dim=20, scale=0.01)
    agents = [
        ADMMAgent(
            LocalProblem(
                SubKernelGram(GSMPKernel(grid), torch.from_numpy(xs)), torch.from_numpy(ys), 0.05
            ),
            ADMMOptions(bits=8),
            index=j,
        )
        for j, (xs, ys) in enumerate(zip(np.array_split(x, 2), np.array_split(y, 2), strict=True))
    ]
    ConsensusADMM(Recording(agents), grid.num_components, ADMMOptions(bits=8, max_iter=5)).run()
    assert seen and set(seen) == {bytes}


def test_quantized_fit_is_close_to_exact_and_sends_fewer_bits(toy_regression) -> None:
    x, y = toy_regression
    settings = {"agents": 2, "components_per_dim": 60, "noise": 0.01}
    exact = GSMPRegressor(**settings).fit(x, y)
    quant = GSMPRegressor(**settings, bits=8).fit(x, y)
    x_new = np.arange(48, 56)[:, None] + 0.5
    gap = np.abs(exact.predict(x_new) - quant.predict(x_new)).max()
    assert gap < 0.05 * np.abs(exact.predict(x_new)).max()
    assert quant.bits_sent_ * 4 < exact.bits_sent_


@pytest.mark.parametrize(("spacing", "bits"), [("uniform", 4), ("log", 4), ("log", 8)])
def test_quantized_updates_settle_on_the_exact_consensus(
    toy_regression, spacing: str, bits: int
) -> None:
    # Messages carry each vector's change from the last one, so the quantization error shrinks
    # as the rounds settle: even 4-bit messages end at the exact run's weights, in about as
    # many rounds (whole 4-bit vectors stayed ~30% off and never met the stopping rule). A
    # uniform grid keeps every weight within a fraction of the largest, a log grid within a
    # fraction of itself. At 4 bits (7 magnitudes a sign) that holds for the weights that carry
    # the fit; weights under 1% of the largest lie in directions the objective barely fixes,
    # where the exact run's own end point is as arbitrary (one at 4e-4 of the largest ended
    # 51% off on one machine, 25% on another), so they are held to the largest's scale.
    x, y = toy_regression
    settings = {"agents": 2, "components_per_dim": 60, "noise": 0.01}
    exact = GSMPRegressor(**settings).fit(x, y)
    quant = GSMPRegressor(**settings, bits=bits, quantizer_spacing=spacing).fit(x, y)
    assert quant.admm_result_.converged
    assert (quant.weights_ >= 0).all()  # the exact average, not a reconstruction below zero
    assert len(quant.admm_result_.rounds) <= 1.5 * len(exact.admm_result_.rounds)
    gap = np.abs(quant.weights_ - exact.weights_)
    if spacing == "uniform":
        assert gap.max() < 1e-3 * np.abs(exact.weights_).max()
    else:
        support = exact.weights_ > 1e-6 * exact.weights_.max()  # down to 1.5e-4: four decades
        relative = gap[support] / exact.weights_[support]
        if bits == 4:
            carrying = exact.weights_[support] >= 0.01 * exact.weights_.max()
            assert relative[carrying].max() < 0.02  # measured 0.31%
            small_gap = gap[support][~carrying]
            assert small_gap.max() < 1e-3 * exact.weights_.max()  # measured 2.3e-4
        else:
            assert relative.max() < 1e-3  # measured 2.9e-4
        assert gap[~support].max() < 1e-6 * exact.weights_.max()


def test_log_grid_messages_keep_a_many_decade_fit_at_its_exact_accuracy() -> None:
    # CO2's weights span five decades (a trend at 4e4 beside seasonal terms at 0.1 - 2): on a
    # uniform 8-bit grid every small weight rounds to 0 or to 167, on the log grid to within
    # a fixed fraction of itself, so the 8-bit fit keeps the exact fit's test error.
    split = slimkl_authors_split("CO2")
    exact = GSMPRegressor(device="cpu").fit(split.x_train, split.y_train)
    exact_mse = np.mean((exact.predict(split.x_test) - split.y_test) ** 2)
    support = exact.weights_ > 0
    assert exact.weights_[support].max() / exact.weights_[support].min() > 1e4
    for seed in (0, 1, 2):
        quant = GSMPRegressor(device="cpu", bits=8, seed=seed).fit(split.x_train, split.y_train)
        quant_mse = np.mean((quant.predict(split.x_test) - split.y_test) ** 2)
        assert abs(quant_mse / exact_mse - 1) < 0.01
        assert quant.bits_sent_ * 8 < exact.bits_sent_
