"""Branch-parallel vs sequential ForkMerge on 2 processes: training wall time per fork interval.

On the demo's model and data (MiniLM truncated to 2 layers, frozen word embeddings, 32 tokens; sentiment with
subjectivity and word polarity as auxiliaries), 2 branches (target only; joint), 16 examples per task and step for
every branch. Each setting runs under `torchrun --nproc_per_node 2` (gloo, one thread per process):
- `sequential`: data-parallel ForkMerge: both processes train branch 0, then both train branch 1 (8 examples each);
- `branch-parallel`: `branch_parallel=True`: process 0 trains branch 0 while process 1 trains branch 1 (16 each);
- `ew`: equal-weight joint training, data-parallel (8 examples each): the cost of one joint interval.
The time per interval is the training wall time (search and merge excluded; the exchange of branches between
processes included) divided by the number of fork rounds. Ratios are taken within one run of this script.

Run: `.venv/bin/python benchmarks/branch_parallel.py` (about 3 minutes on 2 cores).
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS = ("sequential", "branch-parallel", "ew")
BATCH_PER_BRANCH = 16


def worker(setting: str, steps: int, interval: int, weighting: str) -> dict | None:
    import torch
    import torch.distributed as dist
    from common import time_merges, training_kwargs
    from transformers import logging, set_seed

    from hf_forkmerge import ForkMergeConfig, ForkMergeTrainer
    from hf_forkmerge.demo import demo_recipe
    from hf_forkmerge.recipes import build_data, build_model

    torch.set_num_threads(1)
    logging.set_verbosity_error()
    recipe = demo_recipe()
    tokenizer, train, validation, _ = build_data(recipe)
    world_size = int(os.environ["WORLD_SIZE"])
    branch_parallel = setting == "branch-parallel"
    per_device = BATCH_PER_BRANCH if branch_parallel else BATCH_PER_BRANCH // world_size
    set_seed(0)
    args = ForkMergeConfig(
        target_task=recipe.target,
        method="ew" if setting == "ew" else "forkmerge",
        max_steps=steps,
        fork_interval=interval,
        branch_parallel=branch_parallel,
        task_weighting=weighting,
        ddp_backend="gloo",
        **training_kwargs(per_device_train_batch_size=per_device),
    )
    trainer = ForkMergeTrainer(
        model=build_model(recipe), args=args, train_dataset=train, eval_dataset=validation, processing_class=tokenizer
    )
    merge_seconds = time_merges(trainer)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    rounds = -(-steps // interval)
    result = {
        "setting": setting,
        "wall_s": wall,
        "search_merge_s": sum(merge_seconds),
        "interval_s": (wall - sum(merge_seconds)) / rounds,
        "merges": [m["weights"] for m in trainer.merge_history],
    }
    dist.barrier()
    dist.destroy_process_group()
    return result if args.process_index == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=90, help="optimizer steps per branch")
    parser.add_argument("--fork-interval", type=int, default=30)
    parser.add_argument(
        "--task-weighting", choices=("loss", "sampling"), default="loss",
        help="loss: a joint step trains every task (the joint branch costs 3x the target's); sampling: one task per step",
    )
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        result = worker(options.worker, options.steps, options.fork_interval, options.task_weighting)
        if result is not None:
            print(json.dumps(result))
        return

    results = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for setting in SETTINGS:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
                   "--worker", setting, "--steps", str(options.steps), "--fork-interval", str(options.fork_interval),
                   "--task-weighting", options.task_weighting]
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
        results[setting] = json.loads(output.strip().splitlines()[-1])
        print(f"measured {setting}: {results[setting]}", flush=True)

    sequential, ew = results["sequential"]["interval_s"], results["ew"]["interval_s"]
    print(f"\n2 processes (gloo), {os.cpu_count()} CPU cores; 2 branches, {options.steps} steps per branch, fork interval "
          f"{options.fork_interval}, {BATCH_PER_BRANCH} examples per task and step per branch, task_weighting "
          f"{options.task_weighting}\n")
    print("| setting | training time per fork interval (s) | vs sequential | vs one EW interval | search + merge (s) |")
    print("|---|---|---|---|---|")
    for setting, result in results.items():
        search = f"{result['search_merge_s']:.1f}" if setting != "ew" else "-"
        print(f"| {setting} | {result['interval_s']:.2f} | {result['interval_s'] / sequential:.3f}x "
              f"| {result['interval_s'] / ew:.3f}x | {search} |")


if __name__ == "__main__":
    main()
