"""Job specifications: TOML files validated by pydantic, one section per concern.

``[job] kind`` names a runner in ``gramfed.platform.runtime.jobs``; registering a new kind
there makes it valid here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator, model_validator

from gramfed.platform.runtime.jobs import known_kinds
from gramfed.platform.specfile import load_toml_model

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSection(_Section):
    kind: str = "gsmp_fit"
    name: str = Field("job", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        if kind not in known_kinds():
            raise ValueError(f"unknown job kind {kind!r}; known kinds: {', '.join(known_kinds())}")
        return kind


class DataSection(_Section):
    """Either a shipped dataset (``dataset = "slimkl:CO2"``) or the user's own files."""

    dataset: str | None = None
    train: Path | None = None
    test: Path | None = None
    target: str | None = None
    features: list[str] | None = None
    x_key: str = "X"
    y_key: str = "y"

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if (self.dataset is None) == (self.train is None):
            raise ValueError("give exactly one of 'dataset' or 'train'")
        if self.dataset is not None and not self.dataset.startswith("slimkl:"):
            raise ValueError("'dataset' must look like 'slimkl:NAME'")
        return self


class ModelSection(_Section):
    components_per_dim: int | None = Field(None, ge=1, le=10_000)
    freq_lower: float = Field(0.0, ge=0.0)
    freq_upper: float = Field(0.5, gt=0.0)
    scale: PositiveFloat = 1e-3
    sampling: Literal["uniform", "random"] = "uniform"
    noise: Literal["gcv", "learned"] | PositiveFloat = "gcv"
    prediction: Literal["pooled", "fused"] = "pooled"
    seed: int = 0


class ADMMSection(_Section):
    agents: int = Field(2, ge=1, le=1024)
    max_iter: int = Field(100, ge=1)
    rho0: PositiveFloat = 1e-10
    bits: int | None = Field(None, ge=1, le=32)
    step: PositiveFloat | None = None
    spacing: Literal["log", "uniform"] = "log"
    error_feedback: bool = False

    @model_validator(mode="after")
    def _one_quantizer(self) -> ADMMSection:
        if self.bits is not None and self.step is not None:
            raise ValueError("give at most one of 'bits' or 'step'")
        if self.bits == 1 and self.spacing == "log":
            raise ValueError("'bits' = 1 needs 'spacing' = \"uniform\" (a log grid needs 2 bits)")
        return self


class SolverSection(_Section):
    max_iter: int = Field(100, ge=1)
    blocks: int = Field(4, ge=1)
    tol: PositiveFloat = 1e-3
    surrogate: Literal["reference", "tangent"] = "reference"
    mixed_precision: bool = True


class ComputeSection(_Section):
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    memory_budget_gib: PositiveFloat = 4.0


class OutputSection(_Section):
    dir: Path | None = None


class PrivacySection(_Section):
    """Where releases are recorded and to whom a job's results go.

    ``dataset`` names the budget pool (default: derived from ``[data]``). A non-DP job (a GSMP
    fit) releases its results exactly to ``recipient``, which the pool must trust; a pool that
    does not exist yet is created trusting it. ``epsilon``/``delta`` give the pool's budget
    (differentially private kinds spend it); a pool that exists must match them.
    """

    ledger: Path = Path("runs/ledger.sqlite")
    key: Path = Path("~/.gramfed/ledger.key")
    recipient: str = Field("job-owner", min_length=1)
    dataset: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    epsilon: PositiveFloat | None = None
    delta: float | None = Field(None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _delta_needs_epsilon(self) -> PrivacySection:
        if self.delta is not None and self.epsilon is None:
            raise ValueError("'delta' needs 'epsilon'")
        return self


class DPSection(_Section):
    """The ``dp_gsmp`` kind: declared public target range and the random-feature model.

    The reduced grid is ``[model] components_per_dim`` per input dimension (default 1 here);
    ``features_per_component`` random features are drawn per component from ``[model] seed``.
    """

    y_lo: float | None = None
    y_hi: float | None = None
    features_per_component: int = Field(8, ge=1, le=4096)
    # A number is a declared, public noise variance in target units (never estimated from the
    # private targets); "learned" fits it from the released statistics.
    noise: Literal["learned"] | PositiveFloat = "learned"
    split: Literal["predictive", "error_minimising", "uniform"] = "predictive"
    # Shares of each record's unit feature norm given to a constant component and, when the
    # public input_radius (a declared bound on |x|) is given, to a linear component.
    bias_share: float = Field(0.2, ge=0.0, lt=1.0)
    linear_share: float = Field(0.7, ge=0.0, lt=1.0)
    input_radius: PositiveFloat | None = None
    eigen_floor: PositiveFloat = 1.0
    noise_floor: PositiveFloat = 1e-4

    @model_validator(mode="after")
    def _range(self) -> DPSection:
        if (self.y_lo is None) != (self.y_hi is None):
            raise ValueError("give both 'y_lo' and 'y_hi' (the declared target range)")
        if self.y_lo is not None and self.y_hi is not None and not self.y_lo < self.y_hi:
            raise ValueError("'y_lo' must be below 'y_hi'")
        return self


class JobSpec(_Section):
    job: JobSection = JobSection()
    data: DataSection
    model: ModelSection = ModelSection()
    admm: ADMMSection = ADMMSection()
    solver: SolverSection = SolverSection()
    compute: ComputeSection = ComputeSection()
    output: OutputSection = OutputSection()
    privacy: PrivacySection = PrivacySection()
    dp: DPSection = DPSection()

    @model_validator(mode="after")
    def _dp_kind_needs_budget_and_range(self) -> JobSpec:
        if self.job.kind == "dp_gsmp":
            if self.privacy.epsilon is None or self.privacy.delta is None:
                raise ValueError("a dp_gsmp job needs [privacy] epsilon and delta")
            if self.dp.y_lo is None:
                raise ValueError("a dp_gsmp job needs [dp] y_lo and y_hi (public target range)")
        return self

    def output_dir(self) -> Path:
        return self.output.dir or Path("runs") / self.job.name

    def pool_dataset(self) -> str:
        """The privacy pool's dataset name: ``[privacy] dataset``, else from ``[data]``."""
        if self.privacy.dataset is not None:
            return self.privacy.dataset
        if self.data.dataset is not None:
            return self.data.dataset.replace(":", ".")
        assert self.data.train is not None
        return self.data.train.stem

    def estimator_params(self) -> dict[str, object]:
        return {
            "agents": self.admm.agents,
            "bits": self.admm.bits,
            "step": self.admm.step,
            "quantizer_spacing": self.admm.spacing,
            "error_feedback": self.admm.error_feedback,
            "rho0": self.admm.rho0,
            "admm_max_iter": self.admm.max_iter,
            "components_per_dim": self.model.components_per_dim,
            "freq_lower": self.model.freq_lower,
            "freq_upper": self.model.freq_upper,
            "scale": self.model.scale,
            "sampling": self.model.sampling,
            "noise": self.model.noise,
            "prediction": self.model.prediction,
            "seed": self.model.seed,
            "sca_max_iter": self.solver.max_iter,
            "blocks": self.solver.blocks,
            "tol": self.solver.tol,
            "surrogate": self.solver.surrogate,
            "mixed_precision": self.solver.mixed_precision,
            "device": self.compute.device,
            "memory_budget": int(self.compute.memory_budget_gib * (1 << 30)),
        }


def load_job_data(data: DataSection) -> Arrays:
    """Training and (optional) test arrays of a job; one-line errors name the file."""
    if data.dataset is not None:
        from gramfed.platform.datasets import load_slimkl

        split = load_slimkl(data.dataset.removeprefix("slimkl:"))
        return split.x_train, split.y_train, split.x_test, split.y_test
    from gramfed.platform.data import load_split

    train, test = load_split(
        data.train,
        data.test,
        target=data.target,
        features=data.features,
        x_key=data.x_key,
        y_key=data.y_key,
    )
    if test is None:
        return train.x, train.y, None, None
    return train.x, train.y, test.x, test.y


def load_job(path: Path) -> JobSpec:
    """Read and validate a job file; relative data paths resolve against its folder."""
    spec = load_toml_model(path, JobSpec)
    base = path.parent
    data = spec.data
    updates = {
        key: base / value
        for key, value in (("train", data.train), ("test", data.test))
        if value is not None and not value.is_absolute()
    }
    if updates:
        spec = spec.model_copy(update={"data": data.model_copy(update=updates)})
    key = spec.privacy.key.expanduser()
    if key != spec.privacy.key:
        spec = spec.model_copy(update={"privacy": spec.privacy.model_copy(update={"key": key})})
    return spec
