"""DP classification by class-density sketches beside DP-SGD (opacus) at the same (epsilon, delta).

    .venv/bin/python bench/sketch_classify.py [--synthetic-n 1000000] [--epsilon 0.5 1 2 8]
        [--kernel angular|gaussian] [--threads 1]

Data: scikit-learn's shipped digits (pixels / 16), and a synthetic 10-class Gaussian mixture in
16 dimensions. A public split (never used for training or testing) fixes everything that is
chosen from data: the inputs of both methods are centred at the public mean and projected on
the public principal directions that explain ``--variance`` of the public variance (a public
linear map, so both methods see the same features), and the gaussian kernel's bandwidth is the
median rule on the projected public rows. Sketches: one sketch per class, released together
through the gate (one release of rho from (epsilon, delta)), classified by the largest joint
density (class prior weighting) after projecting the released sums on the span of the
public rows' features (post-processing that removes the noise orthogonal to the data; see
``gramfed.workers.sketch.classify``). The default kernel is angular (SimHash LSH counts), whose
score noise at equal rho is about 1/sqrt(3) of the RFF one's (sensitivity sqrt(R + 1) for R
repetitions, against sqrt(3) for one feature vector of norm ~1). Baseline: multinomial
logistic regression on the same features, trained by DP-SGD with opacus'
``make_private_with_epsilon`` at the same (epsilon, delta). Digits figures are means over
``--repeats`` releases and DP-SGD seeds. Both run in this process on the same machine with the
same torch threads; times are build + predict and train + predict
(the public projection, fitted once, is in neither). Prints Markdown.
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


def public_projection(split: Split, variance: float) -> Split:
    """Centre at the public mean and project on the public principal directions that explain
    ``variance`` of the public variance; every part of the split goes through the same map."""
    public = split[0]
    mean = public.mean(0)
    _, s, vt = np.linalg.svd(public - mean, full_matrices=False)
    explained = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(explained, variance) + 1)
    basis = vt[:k].T
    public_p, x, y, x_test, y_test = split
    return (public_p - mean) @ basis, (x - mean) @ basis, y, (x_test - mean) @ basis, y_test


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


def sketch_spec(args: argparse.Namespace, public: np.ndarray, n: int) -> SketchSpec:
    """The class sketches' spec, from public things only: the kernel, the public rows, and the
    public size n (RACE's repetition error ~ 1/sqrt(R) only matters against a noise that
    shrinks like 1/n, so large sets take fewer repetitions)."""
    d = public.shape[1]
    if args.kernel == "gaussian":
        return SketchSpec(
            "gaussian", d, seed=3, bandwidth=median_bandwidth(public), features=args.features
        )
    reps = args.repetitions if n < 10**5 else args.repetitions // 16
    return SketchSpec("angular", d, seed=3, repetitions=reps, hashes=args.hashes)


def sketch_accuracy(
    gate: Gate, split: Split, eps: float, delta: float, args: argparse.Namespace
) -> tuple:
    public, x, y, x_test, y_test = split
    start = time.perf_counter()
    spec = sketch_spec(args, public, len(y))
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
    model = SketchClassifier(sketches, prior=True, public=public[: args.public_rows])
    predicted = model.predict(x_test)
    seconds = time.perf_counter() - start
    return float(np.mean(predicted == y_test.astype(str))), seconds


def dpsgd_accuracy(split: Split, eps: float, delta: float, epochs: int, seed: int) -> tuple:
    _, x, y, x_test, y_test = split
    torch.manual_seed(seed)
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
    parser.add_argument("--kernel", choices=["angular", "gaussian"], default="angular")
    parser.add_argument("--features", type=int, default=4096, help="RFF features (gaussian)")
    parser.add_argument("--repetitions", type=int, default=1024, help="LSH repetitions R")
    parser.add_argument("--hashes", type=int, default=3, help="LSH hashes K per repetition")
    parser.add_argument("--variance", type=float, default=0.9, help="public variance kept")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--public-rows", type=int, default=500, help="public rows that denoise the class sums"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="digits runs averaged (releases, DP-SGD seeds)"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["digits", "synthetic"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        "| data | n train | features | sketch | epsilon | sketch acc. | sketch s | DP-SGD acc. |"
        " DP-SGD s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with scratch_gate() as gate:
        for name in ("digits", "synthetic"):
            if name in args.skip:
                continue
            raw = digits() if name == "digits" else synthetic(args.synthetic_n)
            split = public_projection(raw, args.variance)
            spec = sketch_spec(args, split[0], len(split[2]))
            epochs = args.epochs if name == "digits" else max(1, args.epochs // 5)
            for eps in args.epsilon:
                repeats = args.repeats if name == "digits" else 1
                acc_s, t_s = np.mean(
                    [sketch_accuracy(gate, split, eps, args.delta, args) for _ in range(repeats)], 0
                )
                acc_d, t_d = np.mean(
                    [dpsgd_accuracy(split, eps, args.delta, epochs, r) for r in range(repeats)], 0
                )
                print(
                    f"| {name} | {len(split[2]):,} | {raw[1].shape[1]} -> {split[1].shape[1]} |"
                    f" {spec.describe()} | {eps:g} | {acc_s:.3f} | {t_s:.2f} | {acc_d:.3f} |"
                    f" {t_d:.2f} | {t_d / t_s:.0f}x |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
