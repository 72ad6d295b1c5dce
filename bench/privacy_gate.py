"""Privacy gate benchmark: per-release overhead with the SQLite ledger, and accountant agreement.

    .venv/bin/python bench/privacy_gate.py [--releases 2000] [--dir DIR]

Part 1 times ``Gate.release`` of a one-coordinate Gaussian mechanism end to end (price, budget
check under the write lock, noise, signed entry, durable commit), for each durability mode, and
the same mechanism's noise alone; the gate's overhead is the difference. Part 2 compares the
accountant with Google's ``dp_accounting`` PLD on compositions of Gaussian mechanisms. Prints
the Markdown tables that go into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from gramfed.privacy import keys
from gramfed.privacy.accountant import GaussianEvent, figures
from gramfed.privacy.budget import PoolSpec, Rho
from gramfed.privacy.errors import BudgetExceeded
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger, verify
from gramfed.privacy.mechanisms import GaussianMechanism

PLANS = [
    [(1.0, 1)],
    [(0.8, 3), (2.0, 5)],
    [(1.5, 10), (3.0, 20), (5.0, 50)],
    [(0.5, 1), (4.0, 100)],
    [(10.0, 1000)],
    [(2.0, 1), (1.2, 2), (7.0, 30)],
]


def _quantiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return statistics.median(ordered) * 1e3, ordered[int(0.95 * (len(ordered) - 1))] * 1e3


def time_gate(workdir: Path, releases: int, durability: str) -> dict[str, float]:
    key = workdir / f"{durability}.key"
    keys.generate(key)
    mech = GaussianMechanism.for_rho(Fraction(1, 10**6), l2_sensitivity=1.0)
    with Ledger(workdir / f"{durability}.db", key, create=True, durability=durability) as ledger:
        gate = Gate(ledger)
        gate.create_pool(PoolSpec("bench", Rho(mech.privacy_map().rho * releases)))
        for _ in range(20):  # warm caches outside the pool's budget
            mech.apply(0.5)
        noise = []
        for _ in range(releases):
            t = time.perf_counter()
            mech.apply(0.5)
            noise.append(time.perf_counter() - t)
        spent = []
        for i in range(releases):
            t = time.perf_counter()
            gate.release("bench:record", mech, lambda i=i: i * 1e-3, requester="bench")
            spent.append(time.perf_counter() - t)
        refused = []
        for _ in range(200):
            t = time.perf_counter()
            try:
                gate.release("bench:record", mech, 0.0, requester="bench")
            except BudgetExceeded:
                refused.append(time.perf_counter() - t)
    t = time.perf_counter()
    result = verify(workdir / f"{durability}.db", keys.load_public(keys.public_path(key)))
    verify_s = time.perf_counter() - t
    assert result.ok and result.entries == releases + 201
    release_med, release_p95 = _quantiles(spent)
    noise_med, _ = _quantiles(noise)
    refusal_med, refusal_p95 = _quantiles(refused)
    return {
        "release_med": release_med,
        "release_p95": release_p95,
        "noise_med": noise_med,
        "overhead_med": release_med - noise_med,
        "refusal_med": refusal_med,
        "refusal_p95": refusal_p95,
        "verify_us": verify_s / result.entries * 1e6,
    }


def gate_table(rows: dict[str, dict[str, float]], releases: int) -> str:
    lines = [
        "| durability | releases | release median ms | release p95 ms | noise alone ms |"
        " gate overhead median ms | refusal median ms | refusal p95 ms | verify us/entry |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in rows.items():
        lines.append(
            f"| {mode} | {releases} | {r['release_med']:.3f} | {r['release_p95']:.3f} |"
            f" {r['noise_med']:.3f} | {r['overhead_med']:.3f} | {r['refusal_med']:.3f} |"
            f" {r['refusal_p95']:.3f} | {r['verify_us']:.0f} |"
        )
    return "\n".join(lines)


def accountant_table(delta: float) -> str:
    from dp_accounting.pld import privacy_loss_distribution as google_pld

    logging.getLogger().setLevel(logging.ERROR)
    lines = [
        "| composition (noise multiplier x count) | delta | ours: RDP via opacus | ours: zCDP |"
        " ours: PLD | ours: fixed plan | dp_accounting PLD | RDP / PLD | fixed plan / PLD |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for plan in PLANS:
        ours = figures([GaussianEvent(z, 1.0, n) for z, n in plan], delta)
        total = None
        for z, n in plan:
            part = google_pld.from_gaussian_mechanism(
                z, value_discretization_interval=1e-4
            ).self_compose(n)
            total = part if total is None else total.compose(part)
        ref = total.get_epsilon_for_delta(delta)
        assert ours.epsilon_pld is not None
        name = " + ".join(f"{z:g}x{n}" for z, n in plan)
        lines.append(
            f"| {name} | {delta:g} | {ours.epsilon_rdp:.4f} | {ours.epsilon_zcdp:.4f} |"
            f" {ours.epsilon_pld:.4f} | {ours.epsilon_fixed_plan:.4f} | {ref:.4f} |"
            f" {ours.epsilon_rdp / ref:.4f} | {ours.epsilon_fixed_plan / ref:.5f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=2000)
    parser.add_argument("--dir", type=Path, help="where the ledgers go (default: a temp dir)")
    parser.add_argument("--delta", type=float, default=1e-6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = {mode: time_gate(Path(tmp), args.releases, mode) for mode in ("normal", "full")}
    print(gate_table(rows, args.releases))
    print()
    print(accountant_table(args.delta))


if __name__ == "__main__":
    main()
