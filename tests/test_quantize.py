import numpy as np
import pytest
import torch

from gramfed.workers.quantize import (
    ExactCodec,
    MessageError,
    StochasticQuantizer,
    decode_update,
    decode_vector,
    message_bits,
)


def _sparse_weights(size: int = 400, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(size, dtype=torch.float64)
    x[::13] = 50 * torch.rand(len(x[::13]), generator=gen, dtype=torch.float64)
    return x


@pytest.mark.parametrize(
    "codec",
    [StochasticQuantizer(bits=4, seed=1, spacing="uniform"), StochasticQuantizer(step=0.7, seed=1)],
)
def test_uniform_quantizer_is_unbiased(codec: StochasticQuantizer) -> None:
    x = _sparse_weights()
    trials = 4000
    draws = torch.stack([codec.decode(codec.encode(x)) for _ in range(trials)])
    step = (float(x.max()) / 15) if codec.bits else 0.7
    # per-coordinate variance <= step^2 / 4; a 6-sigma band on the mean of `trials` draws
    bound = 6 * (step / 2) / np.sqrt(trials)
    assert float((draws.mean(0) - x).abs().max()) < bound
    # the error of one draw never exceeds one grid step, and zeros stay exactly zero
    assert float((draws - x).abs().max()) <= step * (1 + 1e-12)
    assert bool((draws[:, x == 0] == 0).all())


def test_bit_counts_are_exact_and_round_trip_is_lossless_on_grid() -> None:
    levels = np.array([0, 3, 0, 0, 255, 17, 0, 0, 0, 1], dtype=np.float64)
    x = torch.from_numpy(levels * 0.25)  # already on the 8-bit grid [0, 63.75]
    codec = StochasticQuantizer(bits=8, spacing="uniform")
    payload = codec.encode(x)
    torch.testing.assert_close(codec.decode(payload), x)
    header_bits = 8 * 22
    nnz = int(np.count_nonzero(levels))
    sparse_bits = 8 * ((len(x) + 7) // 8) + 8 * ((nnz * 8 + 7) // 8)
    dense_bits = 8 * ((len(x) * 8 + 7) // 8)
    assert message_bits(payload) == header_bits + min(sparse_bits, dense_bits)


def test_eight_bit_messages_are_at_least_eight_times_smaller_for_sparse_weights() -> None:
    x = _sparse_weights(500)
    quantized = StochasticQuantizer(bits=8).encode(x)
    assert message_bits(ExactCodec().encode(x)) >= 64 * 500
    assert 64 * 500 / message_bits(quantized) >= 8


def test_exact_codec_round_trip() -> None:
    x = torch.randn(33, dtype=torch.float64)
    assert torch.equal(ExactCodec().decode(ExactCodec().encode(x)), x)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:5],  # shorter than the header
        lambda b: b[:-1],  # truncated payload
        lambda b: b + b"\x00",  # trailing garbage
        lambda b: bytes([9]) + b[1:],  # unknown kind
        lambda b: b[:1] + (1 << 30).to_bytes(4, "little") + b[5:],  # absurd count
    ],
)
def test_corrupt_messages_are_refused(mutate) -> None:
    payload = StochasticQuantizer(bits=6).encode(_sparse_weights())
    with pytest.raises(MessageError):
        decode_vector(mutate(payload))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"bits": 8, "step": 0.1},
        {"bits": 0},
        {"bits": 40},
        {"step": -1.0},
        {"bits": 1},  # a log grid needs a sign bit and a magnitude bit
        {"bits": 8, "spacing": "cubic"},
    ],
)
def test_bad_quantizer_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        StochasticQuantizer(**kwargs)


def test_non_finite_values_are_refused() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        StochasticQuantizer(bits=8).encode(torch.tensor([1.0, float("nan")], dtype=torch.float64))


def test_updates_are_unbiased_keep_zeros_and_shrink_with_the_change() -> None:
    reference = _sparse_weights(seed=1)
    x = reference.clone()
    x[::13] *= 1.01  # a settled round: every weight moved by at most 1%
    x[::26] = 0.0  # and some left the support
    codec, trials = StochasticQuantizer(bits=4, seed=3, spacing="uniform"), 4000
    draws = torch.stack(
        [decode_update(codec.encode_update(x, reference), reference) for _ in range(trials)]
    )
    change = x - reference
    step = float(change[x != 0].max() - change[x != 0].min()) / 15
    assert float((draws.mean(0) - x).abs().max()) < 6 * (step / 2) / np.sqrt(trials)
    assert float((draws - x).abs().max()) <= step * (1 + 1e-12)
    assert bool((draws[:, x == 0] == 0).all())
    # The same weights sent whole carry errors on the scale of the weights' range.
    whole = torch.stack([codec.decode(codec.encode(x)) for _ in range(200)])
    assert float((whole - x).abs().max()) > 20 * float((draws - x).abs().max())


def test_an_update_costs_the_support_bitmap_and_its_levels() -> None:
    x = _sparse_weights()
    payload = StochasticQuantizer(bits=8).encode_update(x, torch.zeros_like(x))
    nnz = int((x != 0).sum())
    assert message_bits(payload) == 8 * 22 + 8 * ((len(x) + 7) // 8) + 8 * nnz
    assert 64 * len(x) / message_bits(payload) >= 8
    exact = ExactCodec().encode_update(x, torch.ones_like(x))  # exact messages need no reference
    assert torch.equal(decode_update(exact, torch.ones_like(x)), x)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],  # truncated levels
        lambda b: b + b"\x00",  # trailing garbage
        lambda b: b[:1] + (401).to_bytes(4, "little") + b[5:],  # another length than the reference
    ],
)
def test_corrupt_updates_are_refused(mutate) -> None:
    x = _sparse_weights()
    payload = StochasticQuantizer(bits=6).encode_update(x, torch.zeros_like(x))
    with pytest.raises(MessageError):
        decode_update(mutate(payload), torch.zeros_like(x))
    with pytest.raises(MessageError, match="against the receiver's reference"):
        decode_vector(payload)


def _wide_range_weights(size: int = 300, seed: int = 0) -> torch.Tensor:
    """Signed values from 1e-6 to 1e5 in magnitude, and zeros: ADMM updates of GSMP weights."""
    gen = torch.Generator().manual_seed(seed)
    magnitude = 10.0 ** (11 * torch.rand(size, generator=gen, dtype=torch.float64) - 6)
    sign = torch.where(torch.rand(size, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
    x = sign * magnitude
    x[::7] = 0.0
    return x


def _log_grid_ratio(x: torch.Tensor, bits: int) -> float:
    magnitude = x.abs()[x != 0]
    return float((magnitude.max() / magnitude.min()) ** (1 / ((1 << (bits - 1)) - 2)))


def test_log_grid_is_unbiased_to_a_fraction_of_each_value() -> None:
    x, trials = _wide_range_weights(), 4000
    codec = StochasticQuantizer(bits=8, seed=5)
    draws = torch.stack([codec.decode(codec.encode(x)) for _ in range(trials)])
    ratio = _log_grid_ratio(x, 8)  # 11 decades over 126 steps: 1.22
    relative_step = (ratio - 1) * x.abs()
    # one draw lies on a neighbouring grid point: within a grid ratio of the value, same sign
    assert bool(((draws - x).abs() <= relative_step * (1 + 1e-9)).all())
    assert bool((torch.sign(draws) == torch.sign(x)).all())
    assert bool((draws[:, x == 0] == 0).all())
    # per-coordinate sd <= half the bracketing gap: a 6-sigma band on the mean of the draws
    assert bool(((draws.mean(0) - x).abs() <= 6 * (relative_step / 2) / np.sqrt(trials)).all())


def test_log_grid_keeps_small_weights_a_uniform_grid_rounds_away() -> None:
    x = torch.zeros(100, dtype=torch.float64)
    x[0], x[1:20] = 4.25e4, torch.linspace(0.01, 2.0, 19, dtype=torch.float64)
    small = slice(1, 20)
    log_codec = StochasticQuantizer(bits=8, seed=2)
    uniform_codec = StochasticQuantizer(bits=8, seed=2, spacing="uniform")
    log_draws = torch.stack([log_codec.decode(log_codec.encode(x)) for _ in range(200)])
    uniform_draws = torch.stack([uniform_codec.decode(uniform_codec.encode(x)) for _ in range(200)])
    log_error = ((log_draws - x).abs() / x.abs())[:, small].max()
    uniform_error = ((uniform_draws - x).abs() / x.abs())[:, small].max()
    # within the grid ratio, (4.25e4 / 0.01)^(1/126) = 1.129, of themselves
    assert float(log_error) <= (_log_grid_ratio(x, 8) - 1) * (1 + 1e-9) < 0.13
    assert float(uniform_error) > 10  # 4.25e4 / 255 = 167 a step, against weights <= 2


def test_log_grid_round_trip_on_grid_and_bit_count() -> None:
    origin, ratio = np.log(1e-3), 0.05
    levels = np.array([1, 9, 40, 127, 127, 3, 60, 2])
    signs = np.array([1, -1, 1, 1, -1, -1, 1, 1])
    on_grid = signs * np.exp(origin + (levels - 1) * ratio)
    x = torch.zeros(40, dtype=torch.float64)
    x[::5] = torch.from_numpy(on_grid)
    codec = StochasticQuantizer(bits=8)
    payload = codec.encode(x)
    torch.testing.assert_close(codec.decode(payload), x, rtol=1e-12, atol=0.0)
    # header, the non-zero bitmap, 8 bits (magnitude index and sign) a non-zero
    assert message_bits(payload) == 8 * 22 + 8 * 5 + 8 * 8
    update = codec.encode_update(x, torch.zeros_like(x))
    assert message_bits(update) == message_bits(payload)


def test_log_grid_messages_outside_the_floats_are_refused() -> None:
    payload = bytearray(StochasticQuantizer(bits=8).encode(_wide_range_weights()))
    payload[6:14] = np.float64(700.0).tobytes()  # origin: exp(700 + k ratio) overflows
    with pytest.raises(MessageError, match="finite floats"):
        decode_vector(bytes(payload))
