import pytest
import torch

from hf_forkmerge.merging import weighted_sum


def _state(seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return {
        "weight": torch.randn(3, 4, generator=generator).to(dtype),
        "running_mean": torch.randn(4, generator=generator).to(dtype),
        "num_batches_tracked": torch.tensor(100 + seed, dtype=torch.long),
    }


@pytest.mark.parametrize("weights", [[0.3, 0.7], [0.2, 0.5, 0.3]])
def test_weighted_sum_is_exact_for_parameters_and_buffers(weights):
    states = [_state(i) for i in range(len(weights))]
    merged = weighted_sum(states, weights)
    for key in ("weight", "running_mean"):
        expected = sum(w * s[key] for w, s in zip(weights, states))
        torch.testing.assert_close(merged[key], expected, rtol=0, atol=1e-6)
        assert merged[key].dtype == torch.float32
    counters = sum(w * s["num_batches_tracked"].double() for w, s in zip(weights, states))
    assert merged["num_batches_tracked"].dtype == torch.long
    assert merged["num_batches_tracked"].item() == round(counters.item())


def test_integer_buffers_are_rounded_not_truncated():
    # 0.2 * 100 + 0.8 * 100 is 99.99999... in floating point: truncation would give 99.
    states = [{"count": torch.tensor(100)}, {"count": torch.tensor(100)}]
    assert weighted_sum(states, [0.2, 0.8])["count"].item() == 100


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_are_preserved_and_summed_precisely(dtype):
    states = [_state(0, dtype), _state(1, dtype)]
    merged = weighted_sum(states, [0.25, 0.75])
    assert merged["weight"].dtype == dtype
    expected = (0.25 * states[0]["weight"].double() + 0.75 * states[1]["weight"].double()).to(dtype)
    assert torch.equal(merged["weight"], expected)


def test_inputs_are_not_modified_and_one_hot_returns_a_copy():
    states = [_state(0), _state(1)]
    before = {k: v.clone() for k, v in states[0].items()}
    merged = weighted_sum(states, [1.0, 0.0])
    assert all(torch.equal(merged[k], before[k]) for k in before)
    merged["weight"].add_(1)
    assert torch.equal(states[0]["weight"], before["weight"])


def test_mismatched_inputs_fail_clearly():
    with pytest.raises(ValueError, match="2 states but 1 weights"):
        weighted_sum([_state(0), _state(1)], [1.0])
    other = _state(1)
    other.pop("running_mean")
    with pytest.raises(ValueError, match="running_mean"):
        weighted_sum([_state(0), other], [0.5, 0.5])
