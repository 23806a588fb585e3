import pytest
import torch

from hf_forkmerge.merging import merge_lora_factors, merge_lora_state, weighted_sum


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


def _lora_pair(seed, rank=4, d_in=20, d_out=30):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rank, d_in, generator=generator), torch.randn(d_out, rank, generator=generator)


@pytest.mark.parametrize("weights", [[0.3, 0.7], [0.2, 0.5, 0.3]])
def test_lora_merge_is_the_best_rank_r_approximation_of_the_summed_updates(weights):
    pairs = [_lora_pair(i) for i in range(len(weights))]
    a, b, error = merge_lora_factors([p[0] for p in pairs], [p[1] for p in pairs], weights)
    assert a.shape == (4, 20) and b.shape == (30, 4)
    dense = sum(w * (pb @ pa) for w, (pa, pb) in zip(weights, pairs))
    actual = ((b @ a - dense).norm() / dense.norm()).item()
    assert error == pytest.approx(actual, rel=1e-5)
    # Eckart-Young: no rank-4 matrix is closer than the truncated SVD of the dense sum.
    u, s, vh = torch.linalg.svd(dense.double())
    assert actual == pytest.approx((s[4:].square().sum() / s.square().sum()).sqrt().item(), rel=1e-5)


def test_lora_merge_is_exact_when_the_sum_fits_the_rank():
    a0, b0 = _lora_pair(0)
    a, b, error = merge_lora_factors([a0, 2 * a0], [b0, b0], [0.4, 0.6])
    torch.testing.assert_close(b @ a, 1.6 * (b0 @ a0), rtol=0, atol=1e-4)
    assert error < 1e-6


def test_lora_merge_one_hot_keeps_the_branch_factors():
    pairs = [_lora_pair(0), _lora_pair(1)]
    a, b, error = merge_lora_factors([p[0] for p in pairs], [p[1] for p in pairs], [0.0, 1.0])
    assert torch.equal(a, pairs[1][0]) and torch.equal(b, pairs[1][1]) and error == 0.0


def test_lora_state_merges_pairs_exactly_and_other_tensors_linearly():
    def state(seed):
        a, b = _lora_pair(seed)
        head = torch.full((2,), float(seed))
        return {"q.lora_A.default.weight": a, "q.lora_B.default.weight": b, "heads.modules_to_save.default.bias": head}

    states = [state(1), state(2)]
    merged, errors = merge_lora_state(states, [0.5, 0.5])
    assert len(errors) == 1 and 0 < errors[0] < 1
    torch.testing.assert_close(merged["heads.modules_to_save.default.bias"], torch.full((2,), 1.5))
    a, b, _ = merge_lora_factors(
        [s["q.lora_A.default.weight"] for s in states], [s["q.lora_B.default.weight"] for s in states], [0.5, 0.5]
    )
    assert torch.equal(merged["q.lora_A.default.weight"], a) and torch.equal(merged["q.lora_B.default.weight"], b)


def test_weights_need_not_sum_to_one_and_sums_can_be_written_in_place():
    states = [_state(0), _state(1), _state(2)]
    weights = [1.0, 2.0, -0.5]
    out = {k: torch.empty_like(v) for k, v in states[0].items()}
    merged = weighted_sum(states, weights, out=out)
    expected = sum(w * s["weight"] for w, s in zip(weights, states))
    torch.testing.assert_close(out["weight"], expected, rtol=0, atol=1e-5)
    assert merged["weight"] is out["weight"] and merged["num_batches_tracked"] is out["num_batches_tracked"]
    assert out["num_batches_tracked"].item() == round(100 + 2 * 101 - 0.5 * 102)


def test_a_branch_with_weight_zero_never_enters_the_merge_even_when_it_holds_nans():
    nan_state = {"w": torch.full((3,), float("nan"))}
    merged = weighted_sum([{"w": torch.ones(3)}, nan_state, {"w": torch.zeros(3)}], [0.5, 0.0, 0.5])
    torch.testing.assert_close(merged["w"], torch.full((3,), 0.5))
    pairs = [_lora_pair(0), tuple(torch.full_like(t, float("nan")) for t in _lora_pair(1)), _lora_pair(2)]
    a, b, _ = merge_lora_factors([p[0] for p in pairs], [p[1] for p in pairs], [0.5, 0.0, 0.5])
    assert a.isfinite().all() and b.isfinite().all()
