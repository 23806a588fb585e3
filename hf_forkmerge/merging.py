"""Pure tensor math for merging branches: tensors in, tensors out, no Trainer."""

from collections.abc import Mapping, Sequence

import torch


def weighted_sum(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Return sum_i weights[i] * states[i] for every key, in each tensor's own dtype and device.

    Floating tensors are summed in float32 (or float64 when they are float64) so that bf16/fp16 weights do not
    lose precision in the sum. Integer and bool tensors (e.g. BatchNorm's `num_batches_tracked`) are averaged
    as floats and rounded back: truncating 99.99999 to 99 would be wrong.
    """
    if len(states) != len(weights):
        raise ValueError(f"got {len(states)} states but {len(weights)} weights")
    if not states:
        raise ValueError("nothing to merge: no states given")
    keys = states[0].keys()
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != keys:
            missing = sorted(set(keys) ^ set(state.keys()))
            raise ValueError(f"state {i} does not have the same keys as state 0 (differs in {missing[:5]})")
    return {key: _weighted_tensor_sum([state[key] for state in states], weights) for key in keys}


def _weighted_tensor_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    first = tensors[0]
    accumulate_dtype = torch.float64 if first.dtype == torch.float64 or not first.is_floating_point() else torch.float32
    total = torch.zeros(first.shape, dtype=accumulate_dtype, device=first.device)
    for tensor, weight in zip(tensors, weights):
        if weight != 0:
            total.add_(tensor.to(device=first.device, dtype=accumulate_dtype), alpha=float(weight))
    if not first.is_floating_point():
        total = total.round()
    return total.to(first.dtype)
