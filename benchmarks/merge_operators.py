"""Would TIES or DARE beat the weighted sum as the final merge of LoRA branches? Measured before adding them.

The demo's LoRA recipe (recipes/minilm/forkmerge/lora.yaml: rank-8 LoRA on query/value, target sentiment with 500
labels, subjectivity and word polarity as auxiliaries), truncated to 2 layers to fit several seeds, 300 steps per
branch, fork interval 100, learning rate 2e-3 (the recipe's). After the run,
the branches as they stood at the last merge are merged again by each operator of `peft.utils.merge_utils`, on the
dense updates dW_i = scale * B_i A_i of every LoRA layer (each a task vector on the shared frozen base), with the
weights the search chose and with equal weights. Every operator's dense result is evaluated exactly (written into
the base weights, the adapter zeroed); the heads are merged by the weighted sum in every case. "weighted sum, rank r"
is what ForkMerge itself loads (the SVD at the adapter's rank). The table gives target test accuracy, mean +- std
over seeds.

When the search gives one branch all the weight, as it often does at the last merge, there is nothing to merge: TIES
and DARE then only prune (and DARE rescales) that branch's update.

Run: `.venv/bin/python benchmarks/merge_operators.py` (about 80 seconds per seed on 2 cores).
"""

import argparse
import copy
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from peft.utils import merge_utils  # noqa: E402
from transformers import logging, set_seed  # noqa: E402

from hf_forkmerge import ForkMergeTrainer  # noqa: E402
from hf_forkmerge.recipes import build_config, build_data, build_model, load_recipe  # noqa: E402
from hf_forkmerge.runner import accuracy  # noqa: E402

RECIPE = Path(__file__).parent.parent / "recipes" / "minilm" / "forkmerge" / "lora.yaml"
DENSITY = 0.5
OPERATORS = {
    "weighted sum, exact": lambda updates, weights: merge_utils.task_arithmetic(updates, weights),
    f"TIES (density {DENSITY})": lambda updates, weights: merge_utils.ties(updates, weights, DENSITY),
    f"DARE linear (density {DENSITY})": lambda updates, weights: merge_utils.dare_linear(updates, weights, DENSITY),
    f"DARE TIES (density {DENSITY})": lambda updates, weights: merge_utils.dare_ties(updates, weights, DENSITY),
}


def train_and_keep_last_branches(recipe, data, seed: int):
    args, peft_config, _, _ = build_config(recipe, seed=seed, output_dir=tempfile.mkdtemp())
    tokenizer, train, validation, test = data
    set_seed(seed)
    trainer = ForkMergeTrainer(
        model=build_model(recipe), args=args, train_dataset=train, eval_dataset=validation,
        processing_class=tokenizer, peft_config=peft_config, compute_metrics=accuracy,
    )
    branches = {}
    merge = trainer.merge

    def keep_branches(round_index):
        branches["slots"] = copy.deepcopy(trainer.store.slots)
        merge(round_index)

    trainer.merge = keep_branches
    trainer.train()
    trainer.store.slots = branches["slots"]  # after the run every slot holds the last merge: put the branches back
    return trainer, branches["slots"], trainer.merge_history[-1]["weights"]


def lora_layers(model) -> dict[str, LoraLayer]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def evaluate_dense_merge(trainer, slots, weights, operator, test_set) -> float:
    """Target test accuracy with every LoRA layer's update merged densely by `operator`, the rest by weighted sum."""
    layers = lora_layers(trainer.model)
    trainer.store.load_merge(weights)  # heads and other tensors: the weighted sum (LoRA factors overwritten below)
    originals = {}
    with torch.no_grad():
        for name, layer in layers.items():
            scale = layer.scaling["default"]
            updates = [scale * s[f"{name}.lora_B.default.weight"] @ s[f"{name}.lora_A.default.weight"] for s in slots]
            base = layer.get_base_layer().weight
            originals[name] = base.detach().clone()
            base.add_(operator(updates, torch.tensor(weights, dtype=updates[0].dtype)))
            layer.lora_B["default"].weight.zero_()
    try:
        return trainer.evaluate(test_set, metric_key_prefix="test")[f"test_{trainer.args.target_task}_accuracy"]
    finally:
        with torch.no_grad():
            for name, layer in layers.items():
                layer.get_base_layer().weight.copy_(originals[name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="steps per branch; the fork interval is a third of it")
    options = parser.parse_args()
    logging.set_verbosity_error()
    overrides = ["--model.load_kwargs", "{num_hidden_layers: 2}", "--disable_tqdm", "true", "--logging_steps", "1000"]
    steps = ["--max_steps", str(options.steps), "--fork_interval", str(options.steps // 3)]
    recipe = load_recipe(RECIPE, [*overrides, *steps])
    data = build_data(recipe)
    test_set = {recipe.target: data[3][recipe.target]}

    scores: dict[tuple[str, str], list[float]] = {}
    truncation: dict[str, list[float]] = {}  # relative error of the rank-r SVD, largest over the layers
    for seed in range(options.seeds):
        trainer, slots, searched = train_and_keep_last_branches(recipe, data, seed)
        equal = [1.0 / len(slots)] * len(slots)
        for label, weights in (("searched", searched), ("equal", equal)):
            truncation.setdefault(label, []).append(trainer.store.load_merge(weights)["lora_error_max"])
            ours = trainer.evaluate(test_set, metric_key_prefix="test")[f"test_{recipe.target}_accuracy"]
            scores.setdefault((label, "weighted sum, rank r (ForkMerge)"), []).append(ours)
            for name, operator in OPERATORS.items():
                torch.manual_seed(seed)  # DARE drops at random
                value = evaluate_dense_merge(trainer, slots, weights, operator, test_set)
                scores.setdefault((label, name), []).append(value)
        print(f"seed {seed}: searched weights {[round(w, 3) for w in searched]}; "
              + "; ".join(f"{label}/{name} {values[-1]:.4f}" for (label, name), values in scores.items()), flush=True)

    ours = "weighted sum, rank r (ForkMerge)"
    print(f"\nTarget test accuracy at the last merge, mean +- std over {options.seeds} seeds; in brackets the mean "
          f"difference from ForkMerge's own merge with the same weights and on how many seeds it is higher\n")
    print("| operator | searched weights | equal weights |")
    print("|---|---|---|")
    for name in [ours, *OPERATORS]:
        cells = []
        for label in ("searched", "equal"):
            values = scores[(label, name)]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cell = f"{statistics.mean(values):.4f} +- {spread:.4f}"
            if name != ours:
                differences = [v - o for v, o in zip(values, scores[(label, ours)])]
                higher = sum(d > 0 for d in differences)
                cell += f" ({statistics.mean(differences):+.4f}; {higher}/{len(values)})"
            cells.append(cell)
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    errors = {label: f"{statistics.mean(values):.4f} (max {max(values):.4f})" for label, values in truncation.items()}
    print(f"\nrelative truncation error of the rank-r weighted sum, worst layer, mean over seeds: searched weights "
          f"{errors['searched']}, equal weights {errors['equal']}")


if __name__ == "__main__":
    main()
