"""DP classification by class-density sketches beside DP-SGD (opacus) at the same (epsilon, delta).

    .venv/bin/python bench/sketch_classify.py [--synthetic-n 1000000] [--epsilon 0.5 1 2 8]

Data: scikit-learn's shipped digits (pixels / 16), and a synthetic 10-class Gaussian mixture in
16 dimensions. A public split (not used for training) fixes the bandwidth by the median rule.
Sketches: one RFF sketch per class, released together through the gate (one release of rho
from (epsilon, delta)). Baseline: multinomial logistic regression on the same features, trained
by DP-SGD with opacus' ``make_private_with_epsilon`` at the same (epsilon, delta). Reports test
accuracy and wall time (build + predict; train + predict) for both. Prints Markdown.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from opacus import PrivacyEngine
from sketch_error import POOL, scratch_gate
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from gramfed.platform.sketch_release import release_sketches
from gramfed.platform.sketchspec import median_bandwidth
from gramfed.privacy.accountant import rho_for_epsilon
from gramfed.privacy.gate import Gate
from gramfed.workers.sketch.classify import SketchClassifier, accumulate_by_label
from gramfed.workers.sketch.spec import SketchSpec

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def digits() -> Split:
    x, y = load_digits(return_X_y=True)
    return _split(x / 16.0, y, public=300, seed=0)


def synthetic(n: int) -> Split:
    rng = np.random.default_rng(1)
    means = rng.normal(0.0, 1.2, (10, 16))
    y = rng.integers(0, 10, n + 20_000)
    x = means[y] + rng.standard_normal((len(y), 16))
    return _split(x, y, public=2000, seed=1)


def _split(x: np.ndarray, y: np.ndarray, public: int, seed: int) -> Split:
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    test = (len(y) - public) // 4 if len(y) < 10**5 else 18_000
    return (
        x[:public],
        x[public : len(y) - test],
        y[public : len(y) - test],
        x[len(y) - test :],
        y[len(y) - test :],
    )


def sketch_accuracy(gate: Gate, split: Split, eps: float, delta: float, features: int) -> tuple:
    public, x, y, x_test, y_test = split
    start = time.perf_counter()
    spec = SketchSpec(
        "gaussian", x.shape[1], seed=3, bandwidth=median_bandwidth(public), features=features
    )
    labels = [str(c) for c in range(10)]
    _, sketches = release_sketches(
        gate,
        POOL,
        spec,
        labels,
        lambda: accumulate_by_label(spec, x, y.astype(str), labels),
        rho=rho_for_epsilon(eps, delta),
        requester="bench",
    )
    predicted = SketchClassifier(sketches, prior=True).predict(x_test)
    seconds = time.perf_counter() - start
    return float(np.mean(predicted == y_test.astype(str))), seconds


def dpsgd_accuracy(split: Split, eps: float, delta: float, epochs: int) -> tuple:
    _, x, y, x_test, y_test = split
    torch.manual_seed(0)
    start = time.perf_counter()
    model = torch.nn.Linear(x.shape[1], 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    data = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    batch = max(64, min(4096, len(y) // 200))
    loader = DataLoader(data, batch_size=batch, shuffle=True)
    model, optimizer, loader = PrivacyEngine().make_private_with_epsilon(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        target_epsilon=eps,
        target_delta=delta,
        epochs=epochs,
        max_grad_norm=1.0,
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            optimizer.step()
    with torch.no_grad():
        predicted = model(torch.tensor(x_test, dtype=torch.float32)).argmax(1).numpy()
    seconds = time.perf_counter() - start
    return float(np.mean(predicted == y_test)), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-n", type=int, default=10**6)
    parser.add_argument("--epsilon", type=float, nargs="+", default=[0.5, 1, 2, 8])
    parser.add_argument("--delta", type=float, default=1e-6)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    print(
        "| data | n train | epsilon | sketch acc. | sketch s | DP-SGD acc. | DP-SGD s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with scratch_gate() as gate:
        for name, split in (("digits", digits()), ("synthetic", synthetic(args.synthetic_n))):
            epochs = args.epochs if name == "digits" else max(1, args.epochs // 5)
            for eps in args.epsilon:
                acc_s, t_s = sketch_accuracy(gate, split, eps, args.delta, args.features)
                acc_d, t_d = dpsgd_accuracy(split, eps, args.delta, epochs)
                print(
                    f"| {name} | {len(split[2]):,} | {eps:g} | {acc_s:.3f} | {t_s:.2f} |"
                    f" {acc_d:.3f} | {t_d:.2f} | {t_d / t_s:.0f}x |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
