"""Target quality of ForkMerge vs STL, EW, GCS, PCGrad and UW on real offline data, over several seeds.

Settings (recipes in benchmarks/recipes/):
- nlp: Rotten Tomatoes sentiment, 500 labels, on MiniLM (2 layers); auxiliaries subjectivity, word polarity, and
  WordNet noun supersenses (dropped, with a message, where Debian's wordnet-base is not installed);
- vision: Fashion-MNIST (14x14), 500 labels, on a small ViT from scratch; auxiliaries rotation prediction and coarse
  garment groups (skipped where Debian's dataset-fashion-mnist is not installed);
- control: digits, 100 labels, with a planted harmful auxiliary (random labels) as the only auxiliary.

Every method gets the same model initialisation (per seed), data, optimizer and steps per branch. The data splits
are fixed (seed 0); each seed changes the initialisation and the order of batches. The table gives the target's test
accuracy, mean +- standard deviation over the seeds; the plot is written to benchmarks/quality.png.

Run: `.venv/bin/python benchmarks/quality.py` (about 35 minutes on 2 cores) or `--quick` (under 5 minutes: fewer
steps, 2 seeds; written to quality_quick.*). `bash benchmarks/install_data.sh` installs the Debian data packages where
apt is available.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import logging  # noqa: E402

from hf_forkmerge import corpora  # noqa: E402
from hf_forkmerge.recipes import build_data, load_recipe  # noqa: E402
from hf_forkmerge.runner import METHOD_LABELS, fit, method_overrides  # noqa: E402

HERE = Path(__file__).parent
SETTINGS = ("nlp", "vision", "control")
METHODS = ("stl", "ew", "gcs", "pcgrad", "uw", "forkmerge")
# ForkMerge with another setting, measured beside the methods when --methods names it: label, fields from `training`.
VARIANTS = {
    "forkmerge_best": (
        "ForkMerge (best)",
        lambda training: {"branch_checkpoint": "best", "branch_eval_steps": training["fork_interval"] // 5},
    ),
}
LABELS = {**METHOD_LABELS, **{name: label for name, (label, _) in VARIANTS.items()}}
QUICK = {  # steps per branch and fork interval per setting in --quick mode
    "nlp": [
        *("--max_steps", "30", "--fork_interval", "15", "--learning_rate", "3e-4"),
        *("--tasks.sentiment.data.num_validation", "200", "--tasks.sentiment.data.num_test", "500"),
    ],
    "vision": ["--max_steps", "60", "--fork_interval", "30"],
    "control": ["--max_steps", "50", "--fork_interval", "25"],
}


def available_recipe(setting: str, quick: bool):
    """The setting's recipe without the tasks whose data is not installed; None if the target's is missing."""
    recipe = load_recipe(HERE / "recipes" / f"{setting}.yaml", QUICK[setting] if quick else [])
    for task, spec in list(recipe.data["tasks"].items()):
        corpus = spec["data"]["corpus"]
        try:
            corpora.CORPORA[corpus](**{k: v for k, v in spec["data"].items() if k != "corpus"})
        except FileNotFoundError as missing:
            if task == recipe.target:
                print(f"skipping the {setting} setting: {missing}", flush=True)
                return None
            print(f"{setting}: leaving out the auxiliary {task!r}: {missing}", flush=True)
            del recipe.data["tasks"][task]
    return recipe


def run(recipe, data, method: str, seed: int) -> tuple[float, list[dict]]:
    """Target test accuracy, and each merge's branch weights and validation score (none for the baselines)."""
    if method in VARIANTS:
        fields = {**method_overrides("forkmerge"), **VARIANTS[method][1](recipe.data["training"])}
    else:
        fields = method_overrides(method)
    trainer, result = fit(recipe, data, **fields, seed=seed, output_dir=tempfile.mkdtemp())
    merges = [{"step": m["step"], "weights": m["weights"], "score": m["score"]} for m in trainer.merge_history]
    return result["metrics"]["accuracy"], merges


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(results)
    figure, axes = plt.subplots(1, len(settings), figsize=(4.5 * len(settings), 3.2), squeeze=False)
    for axis, setting in zip(axes[0], settings):
        rows = results[setting]["methods"]
        labels = [LABELS[m] for m in rows]
        means = [statistics.mean(rows[m]) for m in rows]
        errors = [statistics.stdev(rows[m]) if len(rows[m]) > 1 else 0.0 for m in rows]
        colors = ["#cc6633" if m.startswith("forkmerge") else "#8899aa" for m in rows]
        axis.bar(labels, means, yerr=errors, color=colors, capsize=3)
        low = min(m - e for m, e in zip(means, errors))
        high = max(m + e for m, e in zip(means, errors))
        axis.set_ylim(low - 0.5 * (high - low + 1e-3), high + 0.2 * (high - low + 1e-3))
        axis.set_title(f"{setting}: {results[setting]['target']} ({len(next(iter(rows.values())))} seeds)")
        axis.set_ylabel("target test accuracy")
        axis.tick_params(axis="x", labelrotation=30)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and 2 seeds: under 5 minutes")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; 2 with --quick)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=[*METHODS, *VARIANTS])
    parser.add_argument(
        "--output", help="prefix of the .json, .md and .png written (default benchmarks/quality, with --quick "
        "benchmarks/quality_quick: a smoke run never overwrites the published tables)"
    )
    options = parser.parse_args()
    options.output = options.output or str(HERE / ("quality_quick" if options.quick else "quality"))
    logging.set_verbosity_error()
    seeds = range(options.seeds or (2 if options.quick else 3))

    results, start = {}, time.perf_counter()
    for setting in options.settings:
        recipe = available_recipe(setting, options.quick)
        if recipe is None:
            continue
        data = build_data(recipe)
        scores = {method: [] for method in options.methods}
        merges = {method: [] for method in options.methods if method.startswith("forkmerge")}  # per seed
        for seed in seeds:
            for method in options.methods:
                accuracy, history = run(recipe, data, method, seed)
                scores[method].append(accuracy)
                if method in merges:
                    merges[method].append(history)
                print(f"{setting} seed {seed} {LABELS[method]}: {accuracy:.4f}", flush=True)
        steps = recipe.data["training"]["max_steps"]
        results[setting] = {
            "target": recipe.target, "tasks": list(recipe.data["tasks"]), "steps": steps, "methods": scores, "merges": merges
        }
        write_results(results, options, len(seeds), time.perf_counter() - start)  # after each setting: partial results survive


def write_results(results: dict, options, num_seeds: int, seconds: float) -> None:
    lines = [f"Target test accuracy, mean +- std over {num_seeds} seeds ({seconds:.0f} s in all):", ""]
    lines.append("| setting (target; tasks; steps per branch) | " + " | ".join(LABELS[m] for m in options.methods) + " |")
    lines.append("|---|" + "---|" * len(options.methods))
    for setting, result in results.items():
        cells = []
        for method in options.methods:
            values = result["methods"][method]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} +- {spread:.4f}")
        label = f"{setting} ({result['target']}; {', '.join(result['tasks'])}; {result['steps']})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    Path(f"{options.output}.json").write_text(json.dumps(results, indent=2))
    Path(f"{options.output}.md").write_text(table + "\n")
    plot(results, Path(f"{options.output}.png"))


if __name__ == "__main__":
    main()
