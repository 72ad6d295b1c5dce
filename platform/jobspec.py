"""Job specifications: TOML files validated by pydantic, one section per concern."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from gramfed.platform.specfile import load_toml_model


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSection(_Section):
    kind: Literal["gsmp_fit"] = "gsmp_fit"
    name: str = Field("job", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")


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
    error_feedback: bool = False

    @model_validator(mode="after")
    def _one_quantizer(self) -> ADMMSection:
        if self.bits is not None and self.step is not None:
            raise ValueError("give at most one of 'bits' or 'step'")
        return self


class SolverSection(_Section):
    max_iter: int = Field(100, ge=1)
    blocks: int = Field(4, ge=1)
    tol: PositiveFloat = 1e-3


class ComputeSection(_Section):
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    memory_budget_gib: PositiveFloat = 4.0


class OutputSection(_Section):
    dir: Path | None = None


class JobSpec(_Section):
    job: JobSection = JobSection()
    data: DataSection
    model: ModelSection = ModelSection()
    admm: ADMMSection = ADMMSection()
    solver: SolverSection = SolverSection()
    compute: ComputeSection = ComputeSection()
    output: OutputSection = OutputSection()

    def estimator_params(self) -> dict[str, object]:
        return {
            "agents": self.admm.agents,
            "bits": self.admm.bits,
            "step": self.admm.step,
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
            "device": self.compute.device,
            "memory_budget": int(self.compute.memory_budget_gib * (1 << 30)),
        }


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
    return spec
