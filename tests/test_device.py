"""Device selection: "auto" takes CUDA only when present and the work is large enough."""

import pytest
import torch

from gramfed.workers.device import AUTO_CUDA_MIN_WORK, resolve_device


def test_auto_is_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert resolve_device(None, work=10 * AUTO_CUDA_MIN_WORK).type == "cpu"


def test_auto_keeps_small_work_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("auto", work=AUTO_CUDA_MIN_WORK).type == "cuda"
    assert resolve_device("auto", work=AUTO_CUDA_MIN_WORK - 1).type == "cpu"
    # An explicit choice is obeyed whatever the work.
    assert resolve_device("cuda:0", work=1) == torch.device("cuda", 0)
    assert resolve_device("cpu", work=10 * AUTO_CUDA_MIN_WORK).type == "cpu"


def test_cuda_without_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
