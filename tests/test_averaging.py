import pytest
import torch

from soups.averaging import RunningAverage, average, weighted_sum


def state(w, b, n=0):
    return {"w": torch.tensor(w, dtype=torch.float32), "b": torch.tensor(b, dtype=torch.bfloat16),
            "bn.num_batches_tracked": torch.tensor(n)}


def test_uniform_average_is_exact_mean_and_keeps_dtypes():
    out = average([state([1.0, 2.0], [0.5], 3), state([3.0, 6.0], [1.5], 7), state([2.0, 1.0], [1.0], 9)])
    assert torch.equal(out["w"], torch.tensor([2.0, 3.0]))
    assert out["w"].dtype == torch.float32 and out["b"].dtype == torch.bfloat16
    assert out["b"].item() == 1.0
    # integer buffers come from the first ingredient, not averaged
    assert out["bn.num_batches_tracked"].item() == 3


def test_weighted_average_normalizes_weights():
    out = average([state([0.0], [0.0]), state([4.0], [4.0])], weights=[3.0, 1.0])
    assert out["w"].item() == pytest.approx(1.0)


def test_bfloat16_is_summed_in_float32_not_in_its_own_dtype():
    # 256 + 1 + 1 + 1 is 256 in bfloat16 at every step (8 bits of mantissa); in float32 the mean is 64.75 -> 65 (bfloat16 alone: 64)
    states = [{"w": torch.tensor([v], dtype=torch.bfloat16)} for v in (256.0, 1.0, 1.0, 1.0)]
    assert average(states)["w"].item() == torch.tensor(259 / 4).bfloat16().item() == 65.0
    assert average(states)["w"].dtype == torch.bfloat16


def test_float32_sum_is_within_round_off_of_a_float64_sum_at_k_72():
    g = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(4096, generator=g)} for _ in range(72)]
    exact = torch.stack([s["w"].double() for s in states]).mean(0)
    error = (average(states)["w"].double() - exact).abs().max().item()
    # sequential float32 summation: |error| <= K u sum|x| / K with u = 2^-24; N(0,1) entries give far less
    assert 0 < error < 72 * 2 ** -24 * max(s["w"].abs().max().item() for s in states)


def test_combinations_with_large_or_negative_weights_are_summed_in_float64():
    # task arithmetic with K = 72, lambda = 1: theta_0 weighted 1 - 72 = -71; the result is a small task vector
    g = torch.Generator().manual_seed(0)
    init = {"w": torch.randn(4096, generator=g)}
    tunes = [{"w": init["w"] + 1e-3 * torch.randn(4096, generator=g)} for _ in range(72)]
    exact = (-71 * init["w"].double() + sum(t["w"].double() for t in tunes)).float()
    merged = weighted_sum([(init, -71.0), *((t, 1.0) for t in tunes)])
    assert (merged["w"] - exact).abs().max().item() <= 1e-7 * exact.abs().max().item() + 1e-12
    # extrapolating weights in average() take the same path
    out = average([{"w": torch.tensor([1.0])}, {"w": torch.tensor([1.0 + 2 ** -20])}], weights=[-1.0, 2.0])
    assert out["w"].item() == torch.tensor([1.0 + 2 ** -19]).item()


def test_result_is_returned_once():
    running = RunningAverage()
    running.add(state([2.0], [2.0]))
    running.result()
    for use in (lambda: running.result(), lambda: running.add(state([1.0], [1.0]))):
        with pytest.raises(ValueError, match="already returned"):
            use()


def test_peek_with_does_not_change_the_running_sum():
    running = RunningAverage()
    running.add(state([2.0], [2.0]))
    peek = running.peek_with(state([4.0], [4.0]))
    assert peek["w"].item() == 3.0
    assert running.result()["w"].item() == 2.0


def test_mismatched_keys_are_refused():
    running = RunningAverage()
    running.add({"a": torch.zeros(1)})
    with pytest.raises(ValueError, match="different keys"):
        running.add({"b": torch.zeros(1)})


def test_shape_mismatch_and_weight_count_are_refused():
    running = RunningAverage()
    running.add({"w": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="different shapes"):
        running.add({"w": torch.zeros(4)})
    with pytest.raises(ValueError, match="different shapes"):
        running.peek_with({"w": torch.zeros(4)})
    with pytest.raises(ValueError, match="3 weights for 2"):
        average([state([1.0], [1.0])] * 2, weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="more state dicts"):
        average([state([1.0], [1.0])] * 3, weights=[1.0])
    with pytest.raises(ValueError, match="sum to zero"):
        average([state([1.0], [1.0])] * 2, weights=[1.0, -1.0])


def test_interpolation_is_exact_at_its_ends_and_per_tensor_when_asked():
    from soups.averaging import interpolate

    start, end = state([1.0, 2.0], [0.5], 3), state([3.1, -7.3], [1.25], 9)
    assert all(torch.equal(interpolate(start, end, 1.0)[k], end[k]) for k in end)
    assert all(torch.equal(interpolate(start, end, 0.0)[k], start[k]) for k in ("w", "b"))
    half = interpolate(start, end, 0.5)
    expected = (0.5 * start["w"].double() + 0.5 * end["w"].double()).float()
    assert torch.equal(half["w"], expected) and half["bn.num_batches_tracked"].item() == 9  # buffers: the end's
    per_tensor = interpolate(start, end, lambda key: {"w": 0.0, "b": 1.0}[key])
    assert torch.equal(per_tensor["w"], start["w"]) and torch.equal(per_tensor["b"], end["b"])


def test_weighted_sum_takes_weights_as_given_or_per_tensor():
    from soups.averaging import weighted_sum

    out = weighted_sum([(state([1.0], [2.0]), 2.0), (state([10.0], [20.0]), lambda key: {"w": -1.0, "b": 0.5}[key])])
    assert out["w"].item() == -8.0 and out["b"].item() == 14.0


def test_averaging_never_writes_into_its_inputs():
    state = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64), "f": torch.tensor([3.0])}
    before = {k: v.clone() for k, v in state.items()}
    assert torch.equal(average([state, state, state], [0.2, 0.3, 0.5])["w"], before["w"])
    assert torch.equal(weighted_sum([(state, 2.0)])["f"], 2 * before["f"])
    assert all(torch.equal(state[k], before[k]) for k in state)  # a float64 input is not the accumulator
