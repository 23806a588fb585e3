"""A ForkMerge run that tests/test_resume.py kills with SIGKILL at a chosen point, then resumes.

`python resume_worker.py OUTPUT_DIR KILL_POINT` trains (KILL_POINT "none" runs to the end); `... resume` resumes from
the latest complete checkpoint. The final weights go to OUTPUT_DIR/final.safetensors. Under torchrun with 2 processes
the run is branch-parallel (one process per branch) and KILL_POINT is one of PARALLEL_KILL_POINTS.
"""

import os
import signal
import sys

import numpy as np
import torch
import torch.distributed as dist
from datasets import Dataset
from safetensors.torch import save_file
from torch import nn
from transformers import TrainerCallback

from hf_forkmerge import ForkMergeConfig, ForkMergeTrainer

# 2 branches, fork_interval 3, 9 steps per branch: merges (and checkpoints) at global steps 6, 12 and 18.
KILL_POINTS = {
    "mid_interval_target_branch": ("on_step_end", 8),
    "mid_interval_joint_branch": ("on_step_end", 11),
    "right_after_merge": ("on_log", 12),  # the merge is logged before the checkpoint is saved
    "during_save": ("on_save", 12),  # before ForkMerge's state, the last part of a checkpoint, is written
    "right_after_save": ("on_step_begin", 12),  # the first hook after checkpoint-12 is complete
}

# Branch-parallel: global_step counts one branch's steps; merges (and checkpoints) at steps 3, 6 and 9.
PARALLEL_KILL_POINTS = {"branch_parallel_mid_interval": ("on_step_end", 5)}


class DropoutModel(nn.Module):
    """A shared layer with dropout (so the RNG state matters) under one head per task."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2))
        self.heads = nn.ModuleDict({"main": nn.Linear(16, 2), "aux": nn.Linear(16, 2)})

    def forward(self, task, features, labels=None):
        logits = self.heads[task](self.shared(features))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


def task_data(size: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, 8)).astype(np.float32)
    return Dataset.from_dict({"features": x.tolist(), "labels": (x[:, 0] + x[:, 1] > 0).astype(int).tolist()})


class Kill(TrainerCallback):
    def __init__(self, hook: str, step: int):
        def kill_at(args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)

        setattr(self, hook, kill_at)


def main(output_dir: str, mode: str) -> None:
    branch_parallel = int(os.environ.get("WORLD_SIZE", "1")) > 1
    args = ForkMergeConfig(
        branch_parallel=branch_parallel,
        ddp_backend="gloo" if branch_parallel else None,
        output_dir=output_dir,
        target_task="main",
        fork_interval=3,
        max_steps=9,
        per_device_train_batch_size=8,
        learning_rate=0.1,  # the joint branch then enters merges, so its own random state must survive a resume
        logging_steps=1,
        save_strategy="epoch",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    kill_points = PARALLEL_KILL_POINTS if branch_parallel else KILL_POINTS
    callbacks = [Kill(*kill_points[mode])] if mode in kill_points else []
    trainer = ForkMergeTrainer(
        model=DropoutModel(),
        args=args,
        train_dataset={"main": task_data(40, 1), "aux": task_data(200, 2)},
        eval_dataset={"main": task_data(50, 3)},
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=mode == "resume" or None)
    if args.should_save:
        save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, os.path.join(output_dir, "final.safetensors"))
    if dist.is_initialized():  # a clean shutdown: without it gloo sometimes aborts at exit
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
