"""Runs from recipes: train one, or compare ForkMerge with the baselines on the same budget."""

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .cards import COMPARISON_FILE, RECIPE_FILE, RESULTS_FILE, push_to_hub, write_card
from .recipes import Recipe, build_experiment
from .trainer import ForkMergeTrainer

COMPARED_METHODS = ("stl", "ew", "gcs", "pcgrad", "uw", "forkmerge")
METHOD_LABELS = {"stl": "STL", "ew": "EW", "gcs": "GCS", "pcgrad": "PCGrad", "uw": "UW", "forkmerge": "ForkMerge"}


def accuracy(prediction) -> dict[str, float]:
    """Accuracy of argmax predictions; labels of -100 (padding in token tasks) are ignored."""
    labels = prediction.label_ids
    predictions = np.argmax(prediction.predictions, axis=-1)
    counted = labels != -100
    return {"accuracy": float((predictions[counted] == labels[counted]).mean())}


def train_recipe(recipe: Recipe, push: bool | None = None, hub_model_id: str | None = None, **training) -> dict:
    """Train what the recipe says, save the model, recipe, results and card in output_dir, then push if asked.

    Returns {"split": ..., "metrics": {...}, "seconds": ...}. A failed push raises HubPushError after everything is
    saved locally.
    """
    experiment = build_experiment(recipe, **training)
    args = experiment.args
    target_type = recipe.data["tasks"][recipe.target]["type"]
    trainer = ForkMergeTrainer(
        model=experiment.model,
        args=args,
        train_dataset=experiment.train,
        eval_dataset=experiment.validation,
        processing_class=experiment.processing_class,
        peft_config=experiment.peft_config,
        compute_metrics=None if target_type == "regression" else accuracy,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    split = "test" if recipe.target in experiment.test else "validation"
    evaluation = experiment.test if split == "test" else experiment.validation
    metrics = trainer.evaluate({recipe.target: evaluation[recipe.target]}, metric_key_prefix=split)
    prefix = f"{split}_{recipe.target}_"
    kept = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix) and "per_second" not in k}
    result = {"split": split, "metrics": {k: v for k, v in kept.items() if k != "runtime"}, "seconds": seconds}
    trainer.save_model()
    if args.should_save:
        output_dir = Path(args.output_dir)
        _write_atomic(output_dir / RECIPE_FILE, recipe.to_yaml(training))
        method = METHOD_LABELS[args.method]
        results = {"split": split, "methods": [{"method": method, "metrics": result["metrics"]}]}
        _write_atomic(output_dir / RESULTS_FILE, json.dumps(results, indent=2))
        write_card(output_dir, repo_id=hub_model_id or experiment.hub_model_id)
        if push if push is not None else experiment.push_to_hub:
            repo_id = hub_model_id or experiment.hub_model_id or output_dir.name
            result["pushed_to"] = push_to_hub(output_dir, repo_id, token=args.hub_token, private=args.hub_private_repo)
    return result


def compare_recipe(recipe: Recipe, methods=COMPARED_METHODS) -> dict:
    """Train each method on the same model, data, optimizer and steps per branch; write a markdown table and a plot
    (comparison.md, comparison.json, comparison.png) in the recipe's output_dir, one subfolder per method."""
    output_dir = Path(recipe.data["training"].get("output_dir", "outputs/compare"))
    rows = []
    for method in methods:
        overrides = {"method": method, "output_dir": str(output_dir / method)}
        if method != "forkmerge":  # the baselines fix their own task weights
            overrides.update(branches=None, topk=None)
        result = train_recipe(recipe, push=False, **overrides)
        rows.append({"method": METHOD_LABELS[method], "metrics": result["metrics"], "seconds": result["seconds"]})
    comparison = {"split": result["split"], "target_task": recipe.target, "methods": rows}
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(output_dir / COMPARISON_FILE, json.dumps(comparison, indent=2))
    _write_atomic(output_dir / "comparison.md", comparison_table(comparison))
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


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)
