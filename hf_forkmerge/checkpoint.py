"""ForkMerge's part of a Trainer checkpoint: every branch's optimizer and random state, and the merge history.

The Trainer writes the model, the live optimizer and scheduler, the RNG states and trainer_state.json into
`checkpoint-N`; then this state is written, atomically and last, so that its JSON file marks the checkpoint
complete: a run killed while saving leaves a checkpoint without it, which resuming skips. Checkpoints are taken
right after a merge, when every branch holds the merged weights (the model saved by the Trainer) and the same
scheduler position, so what differs between branches is their optimizer and random state.
"""

import glob
import json
import os
from collections import defaultdict

import torch
from safetensors.torch import load_file, save_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .files import atomic_path, write_text_atomic

STATE_FILE = "forkmerge_state.json"
TENSORS_FILE = "forkmerge_state.safetensors"


def indexed_state(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """`state` (an `optimizer.state` keyed by parameters) keyed by the parameters' indices instead, as in
    `optimizer.state_dict()`: that numbering is stable across runs."""
    live = optimizer.state
    try:
        optimizer.state = state
        return optimizer.state_dict()["state"]
    finally:
        optimizer.state = live


def save_state(
    directory: str, branch_states: list[dict | None], metadata: dict, extra_tensors: dict[str, torch.Tensor]
) -> None:
    """Write each branch's optimizer state (as `indexed_state` gives it; None if the branch has not started yet),
    extra tensors, then `metadata` (JSON) as the completion mark."""
    tensors = {f"extra.{name}": tensor.detach().cpu().contiguous() for name, tensor in extra_tensors.items()}
    values = {}
    for branch, state in enumerate(branch_states):
        for index, entries in (state or {}).items():
            for key, value in entries.items():
                name = f"branch{branch}.{index}.{key}"
                if torch.is_tensor(value):
                    tensors[name] = value.detach().cpu().contiguous()
                else:
                    values[name] = value
    with atomic_path(os.path.join(directory, TENSORS_FILE)) as temporary:
        save_file(tensors, temporary)
    state = {**metadata, "num_branch_states": len(branch_states), "optimizer_values": values}
    write_text_atomic(os.path.join(directory, STATE_FILE), json.dumps(state, indent=2))


def read_metadata(directory: str) -> dict:
    with open(os.path.join(directory, STATE_FILE)) as file:
        return json.load(file)


def load_state(directory: str, optimizer: torch.optim.Optimizer) -> tuple[list[dict | None], dict[str, torch.Tensor]]:
    """The branches' optimizer states (each ready to assign to `optimizer.state`) and the extra tensors."""
    metadata = read_metadata(directory)
    entries = [defaultdict(dict) for _ in range(metadata["num_branch_states"])]
    extras = {}
    for name, value in [*load_file(os.path.join(directory, TENSORS_FILE)).items(), *metadata["optimizer_values"].items()]:
        if name.startswith("extra."):
            extras[name.removeprefix("extra.")] = value
            continue
        branch, index, key = name.split(".", 2)
        entries[int(branch.removeprefix("branch"))][int(index)][key] = value
    live, groups = optimizer.state, optimizer.state_dict()["param_groups"]
    states = []
    for branch_entries in entries:
        if not branch_entries:
            states.append(None)
            continue
        optimizer.load_state_dict({"state": dict(branch_entries), "param_groups": groups})  # casts to each parameter
        states.append(optimizer.state)
    optimizer.state = live
    return states, extras


def complete_checkpoint(output_dir: str, resume_from_checkpoint: str | bool) -> str:
    """The checkpoint to resume from: the given one, or with True the latest complete one in `output_dir`."""
    if resume_from_checkpoint is True:
        checkpoints = glob.glob(os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-*"))
        checkpoints.sort(key=lambda path: int(path.rsplit("-", 1)[1]) if path.rsplit("-", 1)[1].isdigit() else -1)
        for checkpoint in reversed(checkpoints):
            if os.path.exists(os.path.join(checkpoint, STATE_FILE)):
                return checkpoint
        raise ValueError(f"resume_from_checkpoint: no complete ForkMerge checkpoint in {output_dir}")
    checkpoint = str(resume_from_checkpoint)
    if not os.path.isdir(checkpoint):
        raise ValueError(f"resume_from_checkpoint: {checkpoint} does not exist")
    if not os.path.exists(os.path.join(checkpoint, STATE_FILE)):
        raise ValueError(
            f"resume_from_checkpoint: {checkpoint} is incomplete: it has no {STATE_FILE} (the run stopped while "
            "saving it, or another trainer wrote it); resume from an earlier checkpoint"
        )
    return checkpoint
