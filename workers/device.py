"""Device selection: CUDA when present and worth it, always overridable."""

from __future__ import annotations

import torch

# Below this much work per Gram pass (entries: n^2 times sub-kernels), "auto" keeps to the CPU:
# the solver is a long chain of small kernels, which a GPU runs at the pace of its launches
# and synchronisations. Two-agent SLIM-KL fits, an H100 against 2 CPU cores (bench/RESULTS.md):
# ale80, 40^2 x 400 = 6.4e5 per agent: 7.4 s against 0.9 s; passengerdata, 1.2e6: 371 s
# against 29 s; toxicity436, 218^2 x 800 = 3.8e7: 33 s against 314 s.
AUTO_CUDA_MIN_WORK = 10_000_000


def resolve_device(
    device: str | torch.device | None = "auto", work: int | None = None
) -> torch.device:
    """Map ``"auto"``/``None`` to CUDA when available (and, given ``work``, when the work is at
    least ``AUTO_CUDA_MIN_WORK``), else CPU; validate explicit names, which are always obeyed."""
    if device is None or device == "auto":
        worth_it = work is None or work >= AUTO_CUDA_MIN_WORK
        return torch.device("cuda" if torch.cuda.is_available() and worth_it else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available here")
    return resolved
