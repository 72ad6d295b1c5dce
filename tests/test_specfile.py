from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gramfed.platform.specfile import SpecError, load_toml_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Admm(_Strict):
    bits: int | None = Field(None, ge=1, le=32)
    rho: float = 1.0


class Worker(_Strict):
    name: str
    gpus: int = 0


class Job(_Strict):
    name: str
    noise: Literal["gcv"] | float = "gcv"
    admm: Admm = Admm()
    workers: list[Worker] = []
    labels: dict[str, Annotated[int, Field(ge=0)]] = {}

    @model_validator(mode="after")
    def _named_workers_unique(self) -> "Job":
        names = [w.name for w in self.workers]
        if len(set(names)) != len(names):
            raise ValueError("worker names must be unique")
        return self


def _spec(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "job.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _error(path: Path, model: type[BaseModel] = Job) -> str:
    with pytest.raises(SpecError) as err:
        load_toml_model(path, model)
    message = str(err.value)
    assert "\n" not in message
    assert isinstance(err.value, ValueError)
    return message


def test_valid_file_round_trips(tmp_path: Path) -> None:
    path = _spec(
        tmp_path,
        'name = "fit"\nnoise = 0.5\n[admm]\nbits = 8\n'
        '[[workers]]\nname = "a"\ngpus = 2\n[[workers]]\nname = "b"\n[labels]\nteam = 3\n',
    )
    job = load_toml_model(path, Job)
    assert job == Job(
        name="fit",
        noise=0.5,
        admm=Admm(bits=8),
        workers=[Worker(name="a", gpus=2), Worker(name="b")],
        labels={"team": 3},
    )
    assert load_toml_model(str(path), Job).admm.rho == 1.0  # str paths work too


def test_out_of_range_value_names_dotted_key_and_input(tmp_path: Path) -> None:
    path = _spec(tmp_path, 'name = "fit"\n[admm]\nbits = 64\n')
    assert _error(path) == (f"{path}: admm.bits: Input should be less than or equal to 32 (got 64)")


def test_unknown_nested_key_suggests_the_close_one(tmp_path: Path) -> None:
    path = _spec(tmp_path, 'name = "fit"\n[admm]\nbitz = 3\n')
    assert _error(path) == f"{path}: unknown key 'admm.bitz'; did you mean 'admm.bits'?"


def test_unknown_top_level_key_lists_the_known_ones(tmp_path: Path) -> None:
    path = _spec(tmp_path, 'name = "fit"\nzzz = 1\n')
    message = _error(path)
    assert message.startswith(f"{path}: unknown key 'zzz'")
    assert "known keys here: name, noise, admm, workers, labels" in message


def test_unknown_key_is_reported_before_the_missing_one_it_caused(tmp_path: Path) -> None:
    path = _spec(tmp_path, 'nmae = "fit"\n')
    message = _error(path)
    assert message == f"{path}: unknown key 'nmae'; did you mean 'name'? (and 1 more problem)"


def test_missing_required_key(tmp_path: Path) -> None:
    path = _spec(tmp_path, "[admm]\nbits = 4\n")
    assert _error(path) == f"{path}: name: required key is missing"


def test_wrong_type_in_list_of_tables_names_the_index(tmp_path: Path) -> None:
    path = _spec(tmp_path, 'name = "fit"\n[[workers]]\nname = "a"\ngpus = "two"\n')
    message = _error(path)
    assert message.startswith(f"{path}: workers[0].gpus: Input should be a valid integer")
    assert message.endswith("(got 'two')")


def test_dict_values_and_quoted_keys_are_located(tmp_path: Path) -> None:
    path = _spec(tmp_path, 'name = "fit"\n[labels]\n"my.team" = -1\n')
    assert _error(path) == (
        f'{path}: labels."my.team": Input should be greater than or equal to 0 (got -1)'
    )


def test_union_members_are_one_problem_without_pydantic_tags(tmp_path: Path) -> None:
    path = _spec(tmp_path, 'name = "fit"\nnoise = "abc"\n')
    message = _error(path)
    assert message.startswith(f"{path}: noise: Input should be 'gcv' or a valid number")
    assert message.endswith("(got 'abc')")
    assert "more problem" not in message and "float" not in message


def test_model_validator_message_without_pydantic_prefix(tmp_path: Path) -> None:
    path = _spec(tmp_path, 'name = "fit"\n[[workers]]\nname = "a"\n[[workers]]\nname = "a"\n')
    assert _error(path) == f"{path}: worker names must be unique"


def test_several_problems_are_counted_on_one_line(tmp_path: Path) -> None:
    path = _spec(tmp_path, 'name = 1\n[admm]\nbits = 0\nrho = "x"\n')
    message = _error(path)
    assert message.startswith(f"{path}: name: Input should be a valid string (got 1)")
    assert message.endswith("(and 2 more problems)")


def test_long_inputs_are_shortened(tmp_path: Path) -> None:
    path = _spec(tmp_path, f'name = "fit"\nnoise = "{"x" * 500}"\n')
    message = _error(path)
    assert message.endswith("...)") and len(message) < len(str(path)) + 200


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert _error(path) == f"{path}: no such file"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert _error(tmp_path) == f"{tmp_path}: is a directory, not a TOML file"


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ('name = "fit"\n[admm\nbits = 3\n', "line 2, column 6", "Expected ']'"),
        ('name = "fit"\nbits = \n', "line 2, column 8", "Invalid value"),
        ('name = "fit"\nname = "again"\n', "line 2", "Cannot overwrite a value"),
        ('name = "fit"\nlist = [1,\n', "line 2", "not valid TOML"),
    ],
)
def test_toml_syntax_errors_give_the_line(
    tmp_path: Path, text: str, where: str, problem: str
) -> None:
    path = _spec(tmp_path, text)
    message = _error(path)
    assert message.startswith(f"{path}: {where}")
    assert "not valid TOML" in message and problem in message


def test_non_utf8_file_gives_the_line(tmp_path: Path) -> None:
    path = _spec(tmp_path, b'name = "fit"\nlabel = "\xff"\n')
    assert _error(path) == f"{path}: line 2: not valid TOML: not UTF-8 text"


def test_models_must_forbid_unknown_keys(tmp_path: Path) -> None:
    class Loose(BaseModel):
        name: str

    class Outer(_Strict):
        inner: Loose | None = None

    path = _spec(tmp_path, 'name = "fit"\n')
    with pytest.raises(TypeError, match=r"Loose must reject unknown keys.*extra='forbid'"):
        load_toml_model(path, Loose)
    with pytest.raises(TypeError, match="Loose must reject unknown keys"):
        load_toml_model(path, Outer)
