"""Runs from recipes: train one, or compare ForkMerge with the baselines on the same budget."""

import json
import time
from pathlib import Path

import numpy as np

from .cards import COMPARISON_FILE, RECIPE_FILE, RESULTS_FILE, push_to_hub, write_card
from .files import write_text_atomic
from .recipes import Recipe, build_config, build_data, build_model
from .trainer import ForkMergeTrainer

COMPARED_METHODS = ("stl", "ew", "gcs", "pcgrad", "uw", "forkmerge")
METHOD_LABELS = {"stl": "STL", "ew": "EW", "gcs": "GCS", "pcgrad": "PCGrad", "uw": "UW", "forkmerge": "ForkMerge"}


def accuracy(prediction) -> dict[str, float]:
    """Accuracy of argmax predictions; labels of -100 (padding in token tasks) are ignored."""
    labels = prediction.label_ids
    predictions = np.argmax(prediction.predictions, axis=-1)
    counted = labels != -100
    return {"accuracy": float((predictions[counted] == labels[counted]).mean())}


def method_overrides(method: str) -> dict:
    """Training overrides that run a recipe's setting with another method (baselines fix their own task weights)."""
    return {"method": method} if method == "forkmerge" else {"method": method, "branches": None, "topk": None}


def fit(recipe: Recipe, data, **training) -> tuple[ForkMergeTrainer, dict]:
    """Train a fresh model of the recipe on `data` (from `build_data`) and evaluate the target on its test split
    (its validation split if it has none). Returns the trainer and {"split", "metrics", "seconds"}."""
    from transformers import set_seed

    args, peft_config, _, _ = build_config(recipe, **training)
    tokenizer, train, validation, test = data
    set_seed(args.seed)  # every method of a comparison starts from the same weights
    target_type = recipe.data["tasks"][recipe.target]["type"]
    trainer = ForkMergeTrainer(
        model=build_model(recipe),
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        peft_config=peft_config,
        compute_metrics=None if target_type == "regression" else accuracy,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    split = "test" if recipe.target in test else "validation"
    evaluation = test if split == "test" else validation
    metrics = trainer.evaluate({recipe.target: evaluation[recipe.target]}, metric_key_prefix=split)
    prefix = f"{split}_{recipe.target}_"
    kept = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
    timings = ("runtime", "model_preparation_time")  # the Trainer's speed figures, not scores
    scores = {k: v for k, v in kept.items() if k not in timings and "per_second" not in k}
    return trainer, {"split": split, "metrics": scores, "seconds": seconds}


def train_recipe(recipe: Recipe, push: bool | None = None, hub_model_id: str | None = None, **training) -> dict:
    """Train what the recipe says, save the model, recipe, results and card in output_dir, then push if asked.

    Returns {"split": ..., "metrics": {...}, "seconds": ...}. A failed push raises HubPushError after everything is
    saved locally.
    """
    _, _, recipe_push, recipe_hub_id = build_config(recipe, **training)
    trainer, result = fit(recipe, build_data(recipe), **training)
    trainer.save_model()
    args = trainer.args
    if args.should_save:
        output_dir = Path(args.output_dir)
        write_text_atomic(output_dir / RECIPE_FILE, recipe.to_yaml(training))
        results = {"split": result["split"], "methods": [{"method": METHOD_LABELS[args.method], "metrics": result["metrics"]}]}
        write_text_atomic(output_dir / RESULTS_FILE, json.dumps(results, indent=2))
        repo_id = hub_model_id or recipe_hub_id
        write_card(output_dir, repo_id=repo_id)
        if push if push is not None else recipe_push:
            result["pushed_to"] = push_to_hub(output_dir, repo_id or output_dir.name, args.hub_token, args.hub_private_repo)
    return result


def compare_recipe(recipe: Recipe, methods=COMPARED_METHODS) -> dict:
    """Train each method on the same model, data, optimizer and steps per branch; write a markdown table and a plot
    (comparison.md, comparison.json, comparison.png) in the recipe's output_dir, one subfolder per method."""
    output_dir = Path(recipe.data["training"].get("output_dir", "outputs/compare"))
    rows = []
    for method in methods:
        result = train_recipe(recipe, push=False, **method_overrides(method), output_dir=str(output_dir / method))
        rows.append({"method": METHOD_LABELS[method], "metrics": result["metrics"], "seconds": result["seconds"]})
    comparison = {"split": result["split"], "target_task": recipe.target, "methods": rows}
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_dir / COMPARISON_FILE, json.dumps(comparison, indent=2))
    write_text_atomic(output_dir / "comparison.md", comparison_table(comparison))
    _plot_comparison(comparison, output_dir / "comparison.png")
    if "forkmerge" in methods:
        write_card(output_dir / "forkmerge")  # now with the comparison in its results
    return comparison


def comparison_table(comparison: dict) -> str:
    metrics = sorted({k for row in comparison["methods"] for k in row["metrics"]})
    lines = [
        f"Target `{comparison['target_task']}`, {comparison['split']} set:",
        "",
        "| method | " + " | ".join(metrics) + " | training wall time (s) |",
        "|---|" + "---|" * (len(metrics) + 1),
    ]
    for row in comparison["methods"]:
        values = [f"{row['metrics'].get(m, float('nan')):.4f}" for m in metrics]
        lines.append(f"| {row['method']} | " + " | ".join(values) + f" | {row['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _plot_comparison(comparison: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "accuracy" if all("accuracy" in r["metrics"] for r in comparison["methods"]) else "loss"
    labels = [row["method"] for row in comparison["methods"]]
    values = [row["metrics"][metric] for row in comparison["methods"]]
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.bar(labels, values, color=["#cc6633" if label == "ForkMerge" else "#8899aa" for label in labels])
    axis.set_ylabel(f"target {comparison['split']} {metric}")
    low, high = min(values), max(values)
    axis.set_ylim(low - (high - low + 1e-3), high + (high - low + 1e-3) * 0.5)
    for x, value in enumerate(values):
        axis.text(x, value, f"{value:.4f}", ha="center", va="bottom", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
