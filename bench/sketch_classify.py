"""DP classification by class-density sketches beside DP-SGD (opacus) at the same (epsilon, delta).

    .venv/bin/python bench/sketch_classify.py [--synthetic-n 1000000] [--epsilon 1 2 8]
        [--threads 1] [--repeats 5] [--synthetic-repeats 5] [--selection-repeats 20]
        [--skip digits synthetic]

Data: scikit-learn's shipped digits (pixels / 16), and a synthetic 10-class Gaussian mixture in
16 dimensions. A public split (never used for training, selection or testing) fixes what the
features are: both methods see the inputs centred at the public mean and projected on the public
principal directions that explain ``--variance`` of the public variance, and the gaussian
kernel's bandwidths are multiples of the median rule on the projected public rows. Sketches: one
sketch per class, released together through the gate (one release of rho from (epsilon,
delta)), classified by the largest joint density (class prior weighting) after projecting the
released sums on the span of the public rows' features, or on its ``rank`` leading directions
(post-processing; see ``gramfed.workers.sketch.classify``), or, for gaussian sketches, by
Gaussian class densities with a shared covariance in those directions (``rule="gaussian"``,
``gramfed.workers.sketch.discriminant``, with the class means refined by EM on the unlabelled
public rows; post-processing of the same release).

Settings are chosen without the test split. For each data set and epsilon, every setting of the
public grid ``GRID`` (angular LSH with R repetitions and K hashes, or gaussian RFF with D
features and a bandwidth scale; the denoising rank; and for the Gaussian rule 3 or 10 EM
steps) is built on the training rows less a
held-out quarter (digits) or 20,000 rows (synthetic), released at that epsilon and scored on
the held-out rows (mean over ``--selection-repeats`` releases on digits, one on the synthetic
set, whose 20,000 held-out rows vary less); the fastest setting within ``--tolerance`` of the
best held-out accuracy (the target asks for both; those that ran within twice the fastest one's
time ranked by the median of three more timed runs each) is then built on all training rows and
scored on the test split. The selection reads private held-out labels, so it is not covered by
the release's guarantee (public labelled rows would remove that caveat); the figures are honest
estimates of the chosen setting's accuracy, not tuned on the test split.
Baseline: multinomial logistic regression on the same features, trained by DP-SGD with opacus'
``make_private_with_epsilon`` at the same (epsilon, delta), learning rate 0.5, clip 1, not tuned.
Accuracies are means over ``--repeats`` releases and DP-SGD seeds (digits) or
``--synthetic-repeats`` (synthetic), times the medians of the same runs: on a shared machine a
0.2 s run catches a neighbour's burst that a 25 s run averages away, and the median is moved by
neither. Both run in this process with the same torch threads, their runs interleaved; times
are build + release + predict and train + predict (the public projection and median-rule
bandwidth, fixed once, and the selection, timed separately, are in neither). Prints Markdown.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

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
from gramfed.workers.sketch.discriminant import DEFAULT_EM_STEPS, SketchDiscriminant
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


@dataclass(frozen=True)
class Setting:
    """One public choice of sketch: kernel and size, the denoising rank, and the rule."""

    kernel: str  # "angular" (LSH) or "gaussian" (RFF)
    size: int  # repetitions R, or features D
    hashes: int = 0  # K per repetition (angular)
    bandwidth_scale: float = 1.0  # times the public median rule (gaussian)
    rank: int | None = None  # leading public directions kept; None: the whole public span
    rule: str = "density"  # or "gaussian": class Gaussians in the public span (gaussian only)
    floor: float = 1.0  # the gaussian rule's within-class variance floor
    em_steps: int = DEFAULT_EM_STEPS  # the gaussian rule's EM steps on the public rows

    def spec(self, d: int, median: float) -> SketchSpec:
        """The spec for inputs of dimension ``d``; ``median`` is the public median rule."""
        if self.kernel == "gaussian":
            h = self.bandwidth_scale * median
            return SketchSpec("gaussian", d, seed=3, bandwidth=h, features=self.size)
        return SketchSpec("angular", d, seed=3, repetitions=self.size, hashes=self.hashes)

    def describe(self) -> str:
        rank = "full span" if self.rank is None else f"rank {self.rank}"
        if self.rule == "gaussian":
            return (
                f"gaussian D={self.size}, {self.bandwidth_scale:g} x median, class Gaussians"
                f" on {rank}, floor {self.floor:g}, {self.em_steps} EM steps on public rows"
            )
        if self.kernel == "gaussian":
            return f"gaussian D={self.size}, {self.bandwidth_scale:g} x median bandwidth, {rank}"
        return f"angular R={self.size} K={self.hashes}, {rank}"


GRID = (
    *(Setting("angular", r, k, rank=q) for r in (64, 256) for k in (3, 4) for q in (20, None)),
    *(
        Setting("gaussian", d, bandwidth_scale=b, rank=q)
        for d in (256, 1024)
        for b in (0.5, 0.7)
        for q in (20, 40, None)
    ),
    *(
        Setting("gaussian", d, bandwidth_scale=b, rank=q, rule="gaussian", em_steps=steps)
        for d in (64, 128, 256, 1024, 4096)
        for b in (0.7, 1.0)
        for q in (10, 20, 40)
        for steps in (3, DEFAULT_EM_STEPS)
    ),
)
TIMINGS = 3  # runs whose median time ranks the candidates of the selection


def sketch_accuracy(
    gate: Gate,
    split: Split,
    eps: float,
    delta: float,
    setting: Setting,
    args: argparse.Namespace,
) -> tuple[float, float]:
    """Test accuracy and seconds (build, release, predict) of ``setting``; ``args.median`` is
    the data set's public median-rule bandwidth, ``args.public_rows`` the rows that denoise."""
    public, x, y, x_test, y_test = split
    start = time.perf_counter()
    spec = setting.spec(public.shape[1], args.median)
    labels = [str(c) for c in range(10)]
    _, sketches = release_sketches(
        gate,
        POOL,
        spec,
        labels,
        lambda: accumulate_by_label(spec, x, y, labels),
        rho=rho_for_epsilon(eps, delta),
        requester="bench",
    )
    rows = public[: args.public_rows]
    model: SketchClassifier | SketchDiscriminant
    if setting.rule == "gaussian":
        assert setting.rank is not None
        model = SketchDiscriminant(
            sketches,
            public=rows,
            rank=setting.rank,
            floor=setting.floor,
            em_steps=setting.em_steps,
        )
    else:
        model = SketchClassifier(sketches, prior=True, public=rows, rank=setting.rank)
    predicted = model.predict(x_test)
    seconds = time.perf_counter() - start
    return float(np.mean(predicted == y_test.astype(str))), seconds


def select(
    gate: Gate,
    split: Split,
    eps: float,
    delta: float,
    held_out: int,
    args: argparse.Namespace,
    repeats: int,
) -> tuple[Setting, float, float]:
    """The grid's setting to use, its held-out accuracy, and the seconds the selection took.

    Each setting is built on the training rows less their last ``held_out`` and scored on those
    (mean over ``repeats`` releases); the choice is the fastest of those within
    ``args.tolerance`` of the best held-out accuracy (the target asks for both). One timing of a
    0.1-0.5 s build on a shared machine can be off by 2x (it once chose a sketch twice the size
    of the fastest candidate), so the candidates that ran within twice the fastest one's time
    are timed ``TIMINGS`` more times, round-robin so that a burst of load on the machine hits
    each about alike, and ranked by their medians."""
    public, x, y, _, _ = split
    fit = (public, x[:-held_out], y[:-held_out], x[-held_out:], y[-held_out:])
    start = time.perf_counter()
    scored = []
    for setting in GRID:
        runs = [sketch_accuracy(gate, fit, eps, delta, setting, args) for _ in range(repeats)]
        accuracy, seconds = np.mean(runs, 0)
        scored.append((float(accuracy), float(seconds), setting))
    best = max(accuracy for accuracy, _, _ in scored)
    candidates = [row for row in scored if row[0] >= best - args.tolerance]
    fastest = min(seconds for _, seconds, _ in candidates)
    candidates = [row for row in candidates if row[1] <= 2 * fastest]
    timings: list[list[float]] = [[] for _ in candidates]
    for _ in range(TIMINGS):
        for times, (_, _, setting) in zip(timings, candidates, strict=True):
            times.append(sketch_accuracy(gate, fit, eps, delta, setting, args)[1])
    (accuracy, _, chosen), _ = min(
        zip(candidates, timings, strict=True), key=lambda pair: float(np.median(pair[1]))
    )
    return chosen, accuracy, time.perf_counter() - start


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
    parser.add_argument("--epsilon", type=float, nargs="+", default=[1, 2, 8])
    parser.add_argument("--delta", type=float, default=1e-6)
    parser.add_argument("--variance", type=float, default=0.9, help="public variance kept")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--public-rows", type=int, default=500, help="public rows that denoise the class sums"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="digits runs (releases, DP-SGD seeds): accuracies averaged, times' median",
    )
    parser.add_argument(
        "--synthetic-repeats",
        type=int,
        default=5,
        help="synthetic runs (releases, DP-SGD seeds): accuracies averaged, times' median",
    )
    parser.add_argument(
        "--selection-repeats",
        type=int,
        default=20,
        help="digits releases averaged per setting in the selection (its standard error must"
        " be well below --tolerance for the choice to be stable)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="held-out accuracy a faster setting may give up and still be chosen: one point,"
        " as digits' leading settings lie within a point of each other at 2-3 standard errors"
        " of their 20-release means, so a smaller tolerance picks among them by chance",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["digits", "synthetic"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with scratch_gate() as gate:
        for name in ("digits", "synthetic"):
            if name in args.skip:
                continue
            raw = digits() if name == "digits" else synthetic(args.synthetic_n)
            split = public_projection(raw, args.variance)
            args.median = median_bandwidth(split[0])  # public, fixed once like the projection
            n = len(split[2])
            held_out = n // 4 if name == "digits" else 20_000
            repeats = args.repeats if name == "digits" else args.synthetic_repeats
            epochs = args.epochs if name == "digits" else max(1, args.epochs // 5)
            for eps in args.epsilon:
                chosen, val_acc, val_s = select(
                    gate,
                    split,
                    eps,
                    args.delta,
                    held_out,
                    args,
                    args.selection_repeats if name == "digits" else 1,
                )
                # Interleaved, so that a burst of load hits a run of either method alike.
                sketch, dpsgd = [], []
                for r in range(repeats):
                    sketch.append(sketch_accuracy(gate, split, eps, args.delta, chosen, args))
                    dpsgd.append(dpsgd_accuracy(split, eps, args.delta, epochs, r))
                acc_s, acc_d = (float(np.mean([a for a, _ in runs])) for runs in (sketch, dpsgd))
                t_s, t_d = (float(np.median([t for _, t in runs])) for runs in (sketch, dpsgd))
                rows.append(
                    f"| {name} | {n:,} | {raw[1].shape[1]} -> {split[1].shape[1]} |"
                    f" {chosen.describe()} | {val_acc:.3f} ({val_s:.0f} s) | {eps:g} |"
                    f" {acc_s:.3f} | {t_s:.3f} | {acc_d:.3f} | {t_d:.2f} | {t_d / t_s:.0f}x |"
                )
                print(rows[-1], flush=True)
    print()
    print(
        "| data | n train | features | chosen sketch | held-out acc. (selection s) | epsilon |"
        " sketch acc. | sketch s | DP-SGD acc. | DP-SGD s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
