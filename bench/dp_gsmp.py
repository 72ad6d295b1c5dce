"""Private GSMP against non-private GSMP and opacus DP-SGD baselines: test MSE against epsilon.

    .venv/bin/python bench/dp_gsmp.py [--dataset NAME ...] [--epsilon E ...] [--agents J ...]
        [--exact] [--epochs 20] [--repeats 1] [--no-baselines] [--validation] [--append]
        [--out bench/out/dp_gsmp.jsonl] [--plot bench/dp_gsmp_mse.png]

Defaults: the full grid (cccp9500, wine1279, concrete824, airfoil600; epsilon in {0.1, 0.5, 1,
2, 4, 8, inf}; J in {1, 2, 4}; delta = 1e-5). One JSON line per fit goes to ``--out``, the
Markdown table to stdout, and the plot of test MSE against epsilon (one panel per dataset) to
``--plot``; with ``--repeats R`` every setting is fitted R times (seeds seed..seed+R-1: feature
draws and DP-SGD initialisation; the release noise is fresh each time) and the table and plot
show the mean. The test sets are small (30 records for airfoil600, 68 for cccp9500), so one
noise draw is a noisy figure.

Methods (``method`` in the JSON):

- ``dp_gsmp``: ``DPGSMPRegressor`` with J agents, each releasing its statistics once at
  (epsilon, delta) through a fresh privacy gate; at epsilon = inf the same random-feature model
  from exact statistics (the non-private random-feature reference, available everywhere).
- ``exact_gsmp`` (``--exact``; n <= 2,000 only): the engine's exact ``GSMPRegressor(agents=J)``
  on the raw inputs with the SLIM-KL grid, as ``bench/slimkl.py`` runs it (non-private; epsilon
  recorded as inf). cccp9500 is out of reach for its exact Gram work on a 2-core machine.
- ``dpsgd_linear``, ``dpsgd_mlp``: a linear model and an MLP (P -> 32 -> 32 -> 1, ReLU) trained
  with opacus DP-SGD on the pooled training set at the same (epsilon, delta), RDP accountant;
  at epsilon = inf the same training without clipping or noise. Pooled training is the
  stronger baseline: J agents would each hold n / J records.

Preprocessing and public quantities. Inputs are z-scored and targets encoded to [-1, 1] by a
declared range, for every method but ``exact_gsmp``. The benchmark takes the input means and
standard deviations and the target range from the training set and treats them as public
(as a deployment declares domain bounds in the job spec); a deployment must declare them
instead. Hyper-parameters depend on public quantities only, never on test MSE:

- Private GSMP: fixed before the final runs from public quantities (n, P, J, epsilon, delta)
  only, on validation splits of the training sets (80/20, test sets untouched):
  the GSMP grid has Q = 1 component per input dimension (A = P), frequencies in [0, 0.5]
  cycles per standard deviation, spectral scale 1 / (2 pi) (length-scale 1 standard
  deviation, the unit of the z-scored inputs); a constant component with share 0.2 and a
  linear one with share 0.7 of each record's unit feature norm (spectral block 0.1) on the
  inputs clipped to the ball of radius R = sqrt(P) (the root-mean-square norm of P z-scored
  inputs, hence public); the predictive budget split; noise learned above the default floor.
  Feature dimension: the released noise on S is isotropic with spectral norm about
  ``sigma_S sqrt(2 D)`` and J releases add up (``sqrt(J)``), against a Gram matrix of trace
  n spread over D directions, so the signal per direction over the noise scales like
  ``n / (sigma sqrt(J) D^(3/2))`` (sigma: the noise of the unit-sensitivity Gaussian mechanism
  at epsilon, delta). The target is ``D* = min(128, n_j / 8, (n / (8 sigma sqrt(J)))^(2/3))``
  (n_j = n / J records per agent; at epsilon = inf the last term is dropped; D well below n_j
  keeps the noise variance identified, see ``DPGSMPRegressor``), and the features per
  component ``M = max(1, floor((D* - P - 2) / (2 P)))`` fill what the constant and linear
  blocks (P + 2 features) leave. On the validation splits (``--validation``) constants 4 and
  16 did about equally well (8 lies between them), linear share 0.7 beat 0.5 at most epsilon
  <= 2; radius sqrt(P) was best on concrete824 and airfoil600 (1.5 sqrt(P) raised their
  MSE at epsilon = 1 by 29-47%), 1.5 sqrt(P) on cccp9500 and wine1279 (7-11% lower than
  sqrt(P)); one radius was kept for all.
- DP-SGD: Adam, learning rate 1e-2, 20 epochs, expected batch 64 (Poisson sampling),
  per-sample clipping norm 1 (the encoded targets lie in [-1, 1]); the usual defaults of
  opacus's tutorials, not tuned per dataset.

Timings are wall-clock seconds of fit (and, for the baselines, training) on the machine the
run is on; torch runs on one thread, which is faster than its pool on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gramfed.platform.cli.progress import row_progress
from gramfed.platform.datasets import load_slimkl
from gramfed.privacy import keys
from gramfed.privacy.accountant import rho_for_epsilon
from gramfed.privacy.budget import ApproxDP, PoolSpec
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger
from gramfed.workers.dp_gsmp import DPGSMPRegressor, TargetRange
from gramfed.workers.estimator import GSMPRegressor

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

DATASETS = ("cccp9500", "wine1279", "concrete824", "airfoil600")
EPSILONS = (0.1, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
EXACT_MAX_N = 2000


@dataclass(frozen=True)
class Prepared:
    """z-scored inputs, raw targets and the declared target range of one dataset."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    raw_x_train: np.ndarray
    raw_x_test: np.ndarray
    target: TargetRange


def prepare(name: str, validation: bool = False) -> Prepared:
    """The dataset; with ``validation``, 80% of its training set and the other 20% as test set.

    The validation split is how the private model's rule was chosen without the test sets.
    """
    split = load_slimkl(name)
    x_train, y_train, x_test, y_test = split.x_train, split.y_train, split.x_test, split.y_test
    if validation:
        order = np.random.default_rng(0).permutation(len(y_train))
        keep, held = order[: int(0.8 * len(order))], order[int(0.8 * len(order)) :]
        x_train, y_train, x_test, y_test = (
            x_train[keep],
            y_train[keep],
            x_train[held],
            y_train[held],
        )
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 0, std, 1.0)
    target = TargetRange(float(y_train.min()), float(y_train.max()))
    return Prepared(
        name,
        (x_train - mean) / std,
        y_train,
        (x_test - mean) / std,
        y_test,
        x_train,
        x_test,
        target,
    )


def features_per_component(n: int, dims: int, agents: int, epsilon: float, delta: float) -> int:
    """M from public quantities only (module docstring's rule for D*)."""
    target_dim = min(128.0, n / agents / 8)
    if math.isfinite(epsilon):
        sigma = 1.0 / math.sqrt(2.0 * float(rho_for_epsilon(epsilon, delta)))
        target_dim = min(target_dim, (n / (8.0 * sigma * math.sqrt(agents))) ** (2.0 / 3.0))
    return max(1, int((target_dim - dims - 2) // (2 * dims)))


def run_dp_gsmp(
    data: Prepared, epsilon: float, agents: int, delta: float, seed: int, **overrides: Any
) -> dict[str, Any]:
    """One private fit by the rule; ``overrides`` replace the rule's estimator arguments."""
    n, dims = data.x_train.shape
    rule: dict[str, Any] = {
        "components_per_dim": 1,
        "features_per_component": features_per_component(n, dims, agents, epsilon, delta),
        "scale": 1.0 / (2.0 * math.pi),
        "input_radius": math.sqrt(dims),
    }
    model = DPGSMPRegressor(
        target_range=(data.target.lo, data.target.hi),
        agents=agents,
        seed=seed,
        **{**rule, **overrides},
    )
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "ledger.key"
        keys.generate(key)
        with Ledger(Path(tmp) / "ledger.db", key, create=True) as ledger:
            gate = Gate(ledger)
            pool = None
            if math.isfinite(epsilon):
                pool = gate.create_pool(PoolSpec.of(data.name, ApproxDP(epsilon, delta)))
            model.fit(
                data.x_train, data.y_train, epsilon=epsilon, delta=delta, gate=gate, pool=pool
            )
    predicted = model.predict(data.x_test)
    return {
        "method": "dp_gsmp",
        "test_mse": float(np.mean((predicted - data.y_test) ** 2)),
        "seconds": model.fit_seconds_,
        "feature_dim": model.features_.dim,
        "noise_variance": model.noise_variance_,
    }


def run_exact(data: Prepared, agents: int) -> dict[str, Any]:
    model = GSMPRegressor(agents=agents, device="cpu")
    model.fit(data.raw_x_train, data.y_train)
    predicted = model.predict(data.raw_x_test)
    return {
        "method": "exact_gsmp",
        "test_mse": float(np.mean((predicted - data.y_test) ** 2)),
        "seconds": model.fit_seconds_,
        "components": model.grid_.num_components,
    }


def _network(kind: str, dims: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dims, 1)
    return nn.Sequential(
        nn.Linear(dims, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )


def run_dpsgd(
    data: Prepared, kind: str, epsilon: float, delta: float, epochs: int, seed: int
) -> dict[str, Any]:
    torch.manual_seed(seed)
    x = torch.tensor(data.x_train, dtype=torch.float32)
    t = data.target.encode(torch.from_numpy(data.y_train)).to(torch.float32)[:, None]
    loader = DataLoader(TensorDataset(x, t), batch_size=64, shuffle=True)
    model = _network(kind, x.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    started = time.perf_counter()
    if math.isfinite(epsilon):
        # opacus's default RDP orders stop at 63, where log(1/delta) / (alpha - 1) alone exceeds
        # 0.1 for delta = 1e-5: higher orders let the accountant certify epsilon = 0.1.
        noise_multiplier = get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=1 / len(loader),
            epochs=epochs,
            accountant="rdp",
            alphas=[*RDPAccountant.DEFAULT_ALPHAS, 96, 128, 192, 256, 384, 512, 1024],
        )
        model, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=1.0,
        )
    loss_fn = nn.MSELoss()
    for _ in range(epochs):
        for xb, tb in loader:
            if len(xb) == 0:  # Poisson sampling can draw an empty batch
                continue
            optimizer.zero_grad()
            loss_fn(model(xb), tb).backward()
            optimizer.step()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        encoded = model(torch.tensor(data.x_test, dtype=torch.float32))[:, 0].double()
    predicted = data.target.decode(encoded).numpy()
    return {
        "method": f"dpsgd_{kind}",
        "test_mse": float(np.mean((predicted - data.y_test) ** 2)),
        "seconds": seconds,
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean test MSE and seconds over the repeats of each (dataset, J, epsilon, method)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["agents"], r["epsilon"], r["method"]), []).append(r)
    return [
        {
            **members[0],
            "test_mse": float(np.mean([m["test_mse"] for m in members])),
            "mse_sd": float(np.std([m["test_mse"] for m in members])),
            "seconds": float(np.mean([m["seconds"] for m in members])),
            "repeats": len(members),
        }
        for members in groups.values()
    ]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| dataset | J | epsilon | method | test MSE (mean +- sd) | repeats | seconds | D |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summarise(rows):
        lines.append(
            f"| {r['dataset']} | {r['agents']} | {r['epsilon']} | {r['method']} |"
            f" {r['test_mse']:.4g} +- {r['mse_sd']:.2g} | {r['repeats']} | {r['seconds']:.1f} |"
            f" {r.get('feature_dim', '')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean MSE against epsilon per dataset; epsilon = inf drawn at twice the largest finite."""
    rows = summarise(rows)
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    finite = [r["epsilon"] for r in rows if math.isfinite(r["epsilon"])]
    inf_at = 2 * max(finite) if finite else 1.0
    series = sorted({(r["method"], r["agents"]) for r in rows})
    colours = dict(zip(series, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        mine = [r for r in rows if r["dataset"] == name]
        for method, agents in sorted({(r["method"], r["agents"]) for r in mine}):
            points = sorted(
                (r["epsilon"] if math.isfinite(r["epsilon"]) else inf_at, r["test_mse"])
                for r in mine
                if r["method"] == method and r["agents"] == agents
            )
            xs, ys = zip(*points, strict=True)
            label = f"{method} J={agents}" if method in ("dp_gsmp", "exact_gsmp") else method
            if method == "exact_gsmp":
                ax.axhline(ys[0], linestyle=":", color=colours[method, agents], label=label)
            else:
                ax.plot(xs, ys, marker="o", color=colours[method, agents], label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name} (inf drawn at {inf_at:g})")
        ax.set_xlabel("epsilon (delta = 1e-5)")
        ax.set_ylabel("test MSE")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", choices=DATASETS)
    parser.add_argument("--epsilon", action="append", type=float)
    parser.add_argument("--agents", action="append", type=int)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--exact", action="store_true", help="also fit the exact GSMP engine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="fits per setting, seeds seed..seed+R-1 (fresh release noise each); the table and"
        " plot show their mean",
    )
    parser.add_argument(
        "--validation",
        action="store_true",
        help="hold out 20%% of each training set as the test set (the test sets stay unseen)",
    )
    parser.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the DP-SGD baselines",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out/dp_gsmp.jsonl"))
    parser.add_argument("--plot", type=Path, default=Path("bench/dp_gsmp_mse.png"))
    parser.add_argument(
        "--append", action="store_true", help="keep --out's rows, add these, plot them all"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    # opacus's secure-RNG notice and torch's full-backward-hook notice on its per-sample hooks
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message="Full backward hook")
    names = args.dataset or list(DATASETS)
    epsilons = args.epsilon or list(EPSILONS)
    agent_counts = args.agents or [1, 2, 4]
    seeds = range(args.seed, args.seed + args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if args.append and args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            rows.append({**row, "epsilon": float(row["epsilon"])})
    jobs = len(names) * len(epsilons) * (len(agent_counts) + 2 * args.baselines) * args.repeats
    with (
        args.out.open("a" if args.append else "w") as sink,
        row_progress("dp_gsmp", jobs) as advance,
    ):

        def record(row: dict[str, Any], **keys_: Any) -> None:
            row = {**keys_, **row}
            rows.append(row)
            # Strict JSON has no infinity: epsilon = inf is written as the string "inf".
            eps = row["epsilon"]
            sink.write(json.dumps({**row, "epsilon": eps if math.isfinite(eps) else "inf"}) + "\n")
            sink.flush()

        for name in names:
            data = prepare(name, args.validation)
            base = {
                "dataset": name,
                "n": len(data.y_train),
                "delta": args.delta,
                "validation": args.validation,
            }
            if args.exact and len(data.y_train) <= EXACT_MAX_N:
                for agents in agent_counts:
                    record(run_exact(data, agents), **base, agents=agents, epsilon=math.inf)
            for epsilon, seed in itertools.product(epsilons, seeds):
                keys_ = {**base, "epsilon": epsilon, "seed": seed}
                for agents in agent_counts:
                    row = run_dp_gsmp(data, epsilon, agents, args.delta, seed)
                    record(row, **keys_, agents=agents)
                    advance(1)
                for kind in ("linear", "mlp") if args.baselines else ():
                    row = run_dpsgd(data, kind, epsilon, args.delta, args.epochs, seed)
                    record(row, **keys_, agents=1)
                    advance(1)
    print(markdown_table(rows))
    plot(rows, args.plot)


if __name__ == "__main__":
    main()
