import numpy as np
import torch

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


def test_quantized_updates_settle_on_the_exact_consensus(toy_regression) -> None:
    # Messages carry each vector's change from the last one, so the quantization error shrinks
    # as the rounds settle: even 4-bit messages end at the exact run's weights, in about as
    # many rounds (whole 4-bit vectors stayed ~30% off and never met the stopping rule).
    x, y = toy_regression
    settings = {"agents": 2, "components_per_dim": 60, "noise": 0.01}
    exact = GSMPRegressor(**settings).fit(x, y)
    quant = GSMPRegressor(**settings, bits=4).fit(x, y)
    assert quant.admm_result_.converged
    assert (quant.weights_ >= 0).all()  # the exact average, not a reconstruction below zero
    assert len(quant.admm_result_.rounds) <= 1.5 * len(exact.admm_result_.rounds)
    gap = np.abs(quant.weights_ - exact.weights_).max()
    assert gap < 1e-3 * np.abs(exact.weights_).max()
