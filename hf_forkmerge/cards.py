"""Model cards (from the template in model_cards/), the merge-history plot, and the Hub upload."""

import json
from importlib import metadata, resources
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData

from .trainer import HISTORY_FILE

RECIPE_FILE = "recipe.yaml"
RESULTS_FILE = "results.json"
COMPARISON_FILE = "comparison.json"
PLOT_FILE = "merge_weights.png"
PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "ranking/**", "runs/**", "*.tmp"]


class HubPushError(RuntimeError):
    """The upload failed; the local output is untouched."""


def write_card(output_dir: str | Path, repo_id: str | None = None) -> Path:
    """Render output_dir/README.md (and the merge plot) from what a run left in output_dir."""
    output_dir = Path(output_dir)
    history = _read_json(output_dir / HISTORY_FILE) or {"branches": [], "merges": [], "tasks": {}}
    if not history.get("target_task"):
        raise FileNotFoundError(f"{output_dir}: no {HISTORY_FILE} from a ForkMergeTrainer run")
    adapter = _read_json(output_dir / "adapter_config.json")
    target = history["target_task"]
    tasks = history.get("tasks", {})
    recipe = (output_dir / RECIPE_FILE).read_text() if (output_dir / RECIPE_FILE).is_file() else None
    results, results_split = _results(output_dir)
    base_model, load_kwargs = _base_model(history, recipe)
    merges = history["merges"]
    plot = _plot_merges(history, output_dir / PLOT_FILE) if merges else None

    card_data = ModelCardData(
        library_name="peft" if adapter else "transformers",
        base_model=base_model if base_model and not str(base_model).startswith("/") else None,
        tags=["forkmerge", "hf-forkmerge", "auxiliary-task-learning", "multi-task"] + (["lora"] if adapter else []),
        datasets=_data_sources(recipe) or None,
        metrics=sorted({k for row in results for k in row if k != "method"}) or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(resources.files("hf_forkmerge.model_cards") / "forkmerge_card.md"),
        model_name=repo_id or output_dir.name,
        branch_description="LoRA adapter" if adapter else "multi-task model",
        target_task=target,
        load_snippet=_load_snippet(repo_id or str(output_dir), target, tasks, adapter, base_model, load_kwargs),
        tasks=[{"name": n, "role": "target" if n == target else "auxiliary", **spec} for n, spec in tasks.items()],
        branches=[{"name": b["name"], "weights": ", ".join(f"{t}: {w:g}" for t, w in b["weights"].items())} for b in history["branches"]],
        merges=merges,
        criterion=merges[0]["criterion"] if merges else "loss",
        has_lora_error=any("lora_error_max" in m for m in merges),
        merge_plot=PLOT_FILE if plot else None,
        results=results,
        results_split=results_split,
        result_metrics=sorted({k for row in results for k in row if k != "method"}),
        recipe=recipe.strip() if recipe else "(trained from the Python API; no recipe)",
        versions={name: _version(name) for name in ("hf-forkmerge", "transformers", "peft", "torch", "datasets")},
    )
    path = output_dir / "README.md"
    card.save(path)
    return path


def push_to_hub(output_dir: str | Path, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Upload the merged model or adapter, its tokenizer, card and plot. Raises HubPushError, leaving output_dir as
    it was, when the Hub cannot be reached or refuses."""
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(output_dir),
            commit_message="Upload ForkMerge model (hf-forkmerge)",
            ignore_patterns=PUSH_IGNORE,
        )
    except Exception as error:  # every failure ends the same way: say why, keep the local result
        raise HubPushError(
            f"push to the Hub repo {repo_id!r} failed ({type(error).__name__}: {error}). "
            f"Nothing local was changed: the trained model is in {output_dir}; push it later with "
            f"`hf-forkmerge push {output_dir} --hub_model_id {repo_id}`."
        ) from error
    return getattr(commit, "commit_url", None) or f"{repo_id}"


def _results(output_dir: Path) -> tuple[list[dict], str]:
    comparison = _read_json(output_dir / COMPARISON_FILE) or _read_json(output_dir.parent / COMPARISON_FILE)
    source = comparison or _read_json(output_dir / RESULTS_FILE)
    if not source:
        return [], ""
    rows = [{"method": row["method"], **{k: _fmt(v) for k, v in row["metrics"].items()}} for row in source["methods"]]
    return rows, source["split"]


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _plot_merges(history: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    merges = history["merges"]
    steps = [m["step"] for m in merges]
    figure, weights_axis = plt.subplots(figsize=(7, 3.5))
    for index, branch in enumerate(history["branches"]):
        weights_axis.plot(steps, [m["weights"][index] for m in merges], marker="o", label=branch["name"])
    weights_axis.set_xlabel("optimizer step (all branches)")
    weights_axis.set_ylabel("merge weight")
    weights_axis.set_ylim(-0.05, 1.05)
    score_axis = weights_axis.twinx()
    score_axis.plot(steps, [m["score"] for m in merges], color="black", linestyle="--", label=f"validation {merges[0]['criterion']}")
    score_axis.set_ylabel(f"target validation {merges[0]['criterion']}")
    handles = weights_axis.get_legend_handles_labels()[0] + score_axis.get_legend_handles_labels()[0]
    weights_axis.legend(handles, [h.get_label() for h in handles], loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _base_model(history: dict, recipe: str | None) -> tuple[str | None, dict]:
    """The encoder the run started from, as a Hub id where it is one (the packaged MiniLM is), and its load options."""
    import yaml

    from .recipes import MODEL_ALIASES

    model = (yaml.safe_load(recipe) or {}).get("model", {}) if recipe else {}
    name = model.get("name_or_path", history.get("base_model"))
    if name in MODEL_ALIASES:
        name = MODEL_ALIASES[name][1]
    return name, model.get("load_kwargs", {})


def _load_snippet(where: str, target: str, tasks: dict, adapter: dict | None, base: str | None, load_kwargs: dict) -> str:
    if adapter:
        options = "".join(f", {key}={value!r}" for key, value in load_kwargs.items())
        return (
            "from peft import PeftModel\n"
            "from hf_forkmerge import MultiTaskModel\n\n"
            f"base = MultiTaskModel.from_encoder({base or 'ENCODER'!r}, tasks={tasks!r}{options})\n"
            f"model = PeftModel.from_pretrained(base, {where!r})\n"
            f"logits = model(task={target!r}, **inputs).logits"
        )
    return (
        "from hf_forkmerge import MultiTaskModel\n\n"
        f"model = MultiTaskModel.from_pretrained({where!r})\n"
        f"logits = model(task={target!r}, **inputs).logits  # inputs: tokenized text or pixel_values"
    )


def _data_sources(recipe: str | None) -> list[str]:
    import yaml

    tasks = (yaml.safe_load(recipe) or {}).get("tasks", {}) if recipe else {}
    sources = []
    for spec in tasks.values():
        data = spec.get("data", {})
        sources += [data["corpus"]] if "corpus" in data else [str(f) for f in data.get("files", {}).values()]
    return list(dict.fromkeys(sources))


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
