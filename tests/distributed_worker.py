"""A ForkMerge run on a tiny model, launched by tests/test_distributed.py with torchrun (1 or 2 processes).

`python distributed_worker.py OUTPUT_DIR BRANCH_TYPE GLOBAL_BATCH MODE`: MODE `data` (data parallel: every process
trains every branch), `branch` (branch parallel: a group of processes per branch) or `fail` (data parallel, rank 1
raises at step 2).

Every rank writes what it ended with (merge decisions, a checksum of its weights) to rank<i>.json, so that the test
can check that ranks agree; the main process also writes the final trainable weights to final.safetensors.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from peft import LoraConfig
from safetensors.torch import save_file
from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(__file__))
from conftest import tiny_bert_model, token_task  # noqa: E402

from hf_forkmerge import ForkMergeConfig, ForkMergeTrainer  # noqa: E402


class FailOnRank1(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if args.process_index == 1 and state.global_step == 2:
            raise RuntimeError("planted failure on rank 1 at step 2")


def main(output_dir: str, branch_type: str, global_batch: int, mode: str) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    branch_parallel = mode == "branch" and world_size > 1
    processes_per_batch = world_size // 2 if branch_parallel else world_size  # 2 branches
    args = ForkMergeConfig(
        output_dir=output_dir,
        target_task="main",
        fork_interval=3,
        max_steps=6,
        branch_type=branch_type,
        branch_parallel=branch_parallel,
        per_device_train_batch_size=global_batch // processes_per_batch,
        per_device_eval_batch_size=16,
        # SGD: Adam turns the float noise of zero gradients (attention key biases) into full-size steps.
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        eval_strategy="no",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        ddp_backend="gloo" if world_size > 1 else None,
    )
    peft_config = LoraConfig(r=4, target_modules=["query", "value"]) if branch_type == "lora" else None
    trainer = ForkMergeTrainer(
        model=tiny_bert_model(),
        args=args,
        train_dataset={"main": token_task(48, seed=1), "aux": token_task(96, seed=2)},
        eval_dataset={"main": token_task(37, seed=3)},  # not a multiple of the ranks: gathering must drop padding
        peft_config=peft_config,
        callbacks=[FailOnRank1()] if mode == "fail" else [],
    )
    trainer.train()
    trainable = {name: p.detach().contiguous() for name, p in trainer.model.named_parameters() if p.requires_grad}
    checksum = float(sum(t.double().sum() for t in trainable.values()))
    rank = args.process_index
    report = {"merges": [{"weights": m["weights"], "score": m["score"]} for m in trainer.merge_history], "checksum": checksum}
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as file:
        json.dump(report, file)
    if args.should_save:
        save_file(trainable, os.path.join(output_dir, "final.safetensors"))
        logged = sorted({key for entry in trainer.state.log_history for key in entry})
        with open(os.path.join(output_dir, "logs.json"), "w") as file:
            json.dump(logged, file)
    if dist.is_initialized():  # a clean shutdown: without it gloo sometimes aborts at exit
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
