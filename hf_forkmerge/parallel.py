"""Branch-parallel training: one group of processes per branch, every branch training at the same time.

The processes are split into contiguous groups, one per branch; each group is data-parallel over itself (DDP on the
group's own process group), so gradients are averaged only between processes that train the same branch. At a merge
the first process of each group sends its branch's weights to all, and every process runs the same search.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from accelerate.utils import broadcast
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class BranchGroups:
    """Which branch process `process_index` trains, and with which processes."""

    num_branches: int
    world_size: int
    process_index: int

    def __post_init__(self):
        if self.world_size < self.num_branches or self.world_size % self.num_branches:
            raise ValueError(
                f"branch_parallel: needs a multiple of {self.num_branches} processes (one group per branch), got "
                f"{self.world_size}; launch with torchrun or accelerate launch"
            )

    @property
    def group_size(self) -> int:
        return self.world_size // self.num_branches

    @property
    def branch(self) -> int:
        return self.process_index // self.group_size

    @property
    def rank_in_group(self) -> int:
        return self.process_index % self.group_size

    @property
    def leaders(self) -> list[int]:
        """The first process of each branch's group: the one whose copy of the branch the others receive."""
        return [branch * self.group_size for branch in range(self.num_branches)]

    def new_process_group(self) -> dist.ProcessGroup:
        """Create every branch's process group (all processes must call this together) and return this one's."""
        groups = [dist.new_group(list(range(leader, leader + self.group_size))) for leader in self.leaders]
        return groups[self.branch]

    def exchange(self, slots: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Fill every process's copy of every branch (in place) from that branch's group."""
        for slot, leader in zip(slots, self.leaders):
            broadcast(slot, from_process=leader)

    def gather_to_main(self, value) -> list | None:
        """Each branch's `value` (as its group's first process has it) on process 0, in branch order; None elsewhere."""
        gathered = [None] * self.world_size if self.process_index == 0 else None
        dist.gather_object(value if self.rank_in_group == 0 else None, gathered, dst=0)
        return None if gathered is None else [gathered[leader] for leader in self.leaders]


def data_parallel_over(model: torch.nn.Module, group: dist.ProcessGroup, accelerator) -> DistributedDataParallel:
    """DDP of `model` over one branch's process group, with the DDP settings the Trainer gave accelerate."""
    handler = accelerator.ddp_handler
    device = accelerator.device
    wrapped = DistributedDataParallel(
        model,
        process_group=group,
        device_ids=[device.index] if device.type == "cuda" else None,
        **(handler.to_kwargs() if handler is not None else {}),
    )
    if handler is not None:
        handler.register_comm_hook(wrapped)
    return wrapped
