"""Pure tensor math for merging branches: tensors in, tensors out, no Trainer."""

from collections.abc import Mapping, Sequence

import torch


def weighted_sum(
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    out: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Return sum_i weights[i] * states[i] for every key, in each tensor's own dtype and device.

    Floating tensors are summed in float32 (or float64 when they are float64) so that bf16/fp16 weights do not
    lose precision in the sum. Integer and bool tensors (e.g. BatchNorm's `num_batches_tracked`) are averaged
    as floats and rounded back: truncating 99.99999 to 99 would be wrong. With `out`, the sums are written into its
    tensors (e.g. a live model's): writing into memory already in use is about 3x faster than allocating it anew.
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
    return {
        key: _weighted_tensor_sum([state[key] for state in states], weights, None if out is None else out[key])
        for key in keys
    }


def _weighted_tensor_sum(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], out: torch.Tensor | None = None
) -> torch.Tensor:
    first = tensors[0]
    accumulate_dtype = torch.float64 if first.dtype == torch.float64 or not first.is_floating_point() else torch.float32
    terms = [(t.to(device=first.device, dtype=accumulate_dtype), float(w)) for t, w in zip(tensors, weights) if w != 0]
    direct = out if out is not None and out.dtype == accumulate_dtype and out.device == first.device else None
    if not terms:
        total = torch.zeros(first.shape, dtype=accumulate_dtype, device=first.device)
    elif len(terms) == 1:
        total = torch.mul(terms[0][0], terms[0][1], out=direct)
    else:
        # A running weighted mean by lerp: one fused pass per branch, then one scale if the weights do not sum to 1.
        (head, head_weight), (second, second_weight) = terms[:2]
        cumulative = head_weight + second_weight
        total = torch.lerp(head, second, second_weight / cumulative, out=direct)
        for tensor, weight in terms[2:]:
            cumulative += weight
            total.lerp_(tensor, weight / cumulative)
        if cumulative != 1.0:
            total.mul_(cumulative)
    if not first.is_floating_point():
        total = total.round()
    if out is None:
        return total.to(first.dtype)
    if total is not out:
        out.copy_(total)
    return out


LORA_FACTORS = (("lora_A", "lora_B"), ("lora_embedding_A", "lora_embedding_B"))


def merge_lora_factors(
    a_factors: Sequence[torch.Tensor], b_factors: Sequence[torch.Tensor], weights: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Factors (A, B) of the rank-r update closest to sum_i w_i B_i A_i, and its relative error.

    The exact sum has rank up to n*r: it is [w_1 B_1 ... w_n B_n] @ [A_1; ...; A_n]. Its SVD comes from the
    QR factors of the two stacked matrices (never forming the d_out x d_in product); the top r singular
    triplets give B = U sqrt(S) and A = sqrt(S) V^T. The error is ||dropped singular values|| / ||all of them||
    (Frobenius), 0 when the sum already has rank <= r. A one-hot weighting returns that branch's own factors.
    """
    nonzero = [i for i, w in enumerate(weights) if w != 0]  # a branch left out may hold NaNs: 0 * NaN is NaN
    if len(nonzero) == 1 and weights[nonzero[0]] == 1:
        return a_factors[nonzero[0]].clone(), b_factors[nonzero[0]].clone(), 0.0
    a_factors, b_factors, weights = ([seq[i] for i in nonzero] for seq in (a_factors, b_factors, weights))
    rank, dtype = a_factors[0].shape[0], a_factors[0].dtype
    stacked_b = torch.cat([w * b.double() for w, b in zip(weights, b_factors)], dim=1)
    stacked_a = torch.cat([a.double() for a in a_factors], dim=0)
    q_b, r_b = torch.linalg.qr(stacked_b)
    q_a, r_a = torch.linalg.qr(stacked_a.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    kept = min(rank, s.numel())
    root = s[:kept].sqrt()
    merged_b = torch.zeros(stacked_b.shape[0], rank, dtype=torch.float64, device=stacked_b.device)
    merged_a = torch.zeros(rank, stacked_a.shape[1], dtype=torch.float64, device=stacked_a.device)
    merged_b[:, :kept] = q_b @ u[:, :kept] * root
    merged_a[:kept] = root[:, None] * (vh[:kept] @ q_a.T)
    total = s.square().sum()
    error = (s[kept:].square().sum() / total).sqrt().item() if total > 0 else 0.0
    return merged_a.to(dtype), merged_b.to(dtype), error


def merge_lora_state(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Merge branches that are LoRA adapters (plus heads and other full tensors) on one shared base.

    Each LoRA pair (lora_A, lora_B) is merged so that its update approximates sum_i w_i B_i A_i at the
    adapter's rank (see `merge_lora_factors`); every other tensor is a plain weighted sum. Returns the merged
    state and the relative truncation error of each LoRA pair.
    """
    pairs = {}
    for key in states[0]:
        for a_name, b_name in LORA_FACTORS:
            if f".{a_name}." in key:
                pairs[key] = key.replace(f".{a_name}.", f".{b_name}.")
    factor_keys = set(pairs) | set(pairs.values())
    merged = weighted_sum([{k: v for k, v in s.items() if k not in factor_keys} for s in states], weights)
    errors = []
    for a_key, b_key in pairs.items():
        a, b, error = merge_lora_factors([s[a_key] for s in states], [s[b_key] for s in states], weights)
        merged[a_key], merged[b_key] = a, b
        errors.append(error)
    return merged, errors
