"""Branch storage: snapshots of the part of the model in which branches differ, behind one small interface."""

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .merging import merge_lora_state, weighted_sum


class BranchStore(ABC):
    """Holds one snapshot per branch of the model's branch-specific tensors and moves them in and out of the model.

    The live model holds the weights of the branch in training; `save`/`load` copy them to and from that branch's
    slot in place, so parameters keep their identity (optimizers, DDP and compiled graphs keep working).
    """

    def __init__(self, model: nn.Module, num_branches: int, offload: bool = False):
        self.live = self.branch_tensors(model)
        self.device = torch.device("cpu") if offload else None
        initial = self.snapshot()
        self.slots = [initial] + [self._copy(initial) for _ in range(num_branches - 1)]

    @staticmethod
    def branch_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
        """The live tensors in which branches differ: trainable parameters and buffers, by name."""
        tensors, seen = {}, set()
        for name, tensor in model.state_dict(keep_vars=True).items():
            is_frozen_parameter = isinstance(tensor, nn.Parameter) and not tensor.requires_grad
            if is_frozen_parameter or id(tensor) in seen:  # frozen weights never differ; tied ones count once
                continue
            seen.add(id(tensor))
            tensors[name] = tensor.data
        return tensors

    @abstractmethod
    def load_merge(self, weights: Sequence[float]) -> dict[str, float]:
        """Write the merge of the branches for these weights (one per branch, summing to 1) into the live model;
        return a report of what the merge lost, if anything."""

    def save(self, branch: int) -> None:
        for name, tensor in self.slots[branch].items():
            tensor.copy_(self.live[name])

    def load(self, branch: int) -> None:
        self.load_state(self.slots[branch])

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the live branch tensors, e.g. to come back to later with `load_state`."""
        return self._copy(self.live)

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, tensor in self.live.items():
                tensor.copy_(state[name])

    def is_finite(self, branch: int) -> bool:
        return all(bool(tensor.isfinite().all()) for tensor in self.slots[branch].values() if tensor.is_floating_point())

    def fork_all(self) -> None:
        """After a merge, every branch continues from the live model's weights."""
        for branch in range(len(self.slots)):
            self.save(branch)

    def _copy(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().to(self.device or tensor.device, copy=True) for name, tensor in state.items()}


class FullWeightBranches(BranchStore):
    """Each branch is a full copy of the trainable parameters and of all buffers (BatchNorm statistics too)."""

    def load_merge(self, weights: Sequence[float]) -> dict[str, float]:
        with torch.no_grad():
            weighted_sum(self.slots, weights, out=self.live)
        return {}


class LoraBranches(BranchStore):
    """Each branch is a copy of the LoRA adapter's factors (plus heads and other trainable tensors) on the one
    frozen base model. A merge gives every LoRA layer the update nearest to sum_i w_i B_i A_i at the adapter's
    rank (an SVD of the exact sum); the relative truncation error is reported."""

    def load_merge(self, weights: Sequence[float]) -> dict[str, float]:
        state, errors = merge_lora_state(self.slots, weights)
        self.load_state(state)
        return {"lora_error_max": max(errors, default=0.0), "lora_error_mean": sum(errors) / max(len(errors), 1)}
