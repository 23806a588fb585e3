import copy
from pathlib import Path

import pytest
import yaml

from hf_forkmerge.recipes import RecipeError, load_recipe

SHIPPED = sorted(Path(__file__).parents[1].glob("recipes/*/*/*.yaml"))


def base_recipe(tmp_path) -> dict:
    (tmp_path / "train.csv").write_text("sentence,label\ngood film,1\nbad film,0\n")
    (tmp_path / "val.csv").write_text("sentence,label\nfine,1\n")
    return {
        "model": {"name_or_path": "minilm", "load_kwargs": {"num_hidden_layers": 1}},
        "tasks": {
            "main": {
                "type": "sequence_classification",
                "num_labels": 2,
                "data": {"files": {"train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "val.csv")}, "text_column": "sentence"},
            },
            "aux": {"type": "sequence_classification", "num_labels": 2, "data": {"corpus": "word_polarity"}},
        },
        "training": {"target_task": "main", "fork_interval": 5, "max_steps": 10, "output_dir": str(tmp_path / "out")},
    }


def write(tmp_path, recipe, name="recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert recipe.target in recipe.data["tasks"]


def test_there_are_nlp_lora_and_vision_recipes():
    names = {str(p.relative_to(p.parents[2])) for p in SHIPPED}
    assert {"minilm/forkmerge/demo.yaml", "minilm/forkmerge/lora.yaml", "vit-tiny/forkmerge/digits.yaml"} <= names


def test_overrides(tmp_path):
    path = write(tmp_path, base_recipe(tmp_path))
    overrides = ["--max_steps", "20", "--learning_rate=0.5", "--seed", "3", "--topk", "[0, 1]", "--model.pooling", "cls"]
    recipe = load_recipe(path, overrides)
    training = recipe.data["training"]
    assert training["max_steps"] == 20 and training["learning_rate"] == 0.5 and training["topk"] == [0, 1]
    assert recipe.data["seed"] == 3 and recipe.data["model"]["pooling"] == "cls"
    assert "topk: [0, 1]" not in path.read_text()  # the file itself is left alone
    nested = load_recipe(path, ["--tasks.main.num_labels", "3"])
    assert nested.data["tasks"]["main"]["num_labels"] == 3
    assert load_recipe(path, ["--learning_rate", "3e-4"]).data["training"]["learning_rate"] == 3e-4
    # YAML 1.2 booleans only: `no` is the strategy's name, not False
    assert load_recipe(path, ["--save_strategy", "no"]).data["training"]["save_strategy"] == "no"
    assert load_recipe(path, ["--disable_tqdm", "true"]).data["training"]["disable_tqdm"] is True


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    recipe = base_recipe(tmp_path)
    recipe["training"]["learning_rate"] = "PLACEHOLDER"
    text = yaml.safe_dump(recipe, sort_keys=False).replace("PLACEHOLDER", "5e-5")
    assert load_recipe(write(tmp_path, text)).data["training"]["learning_rate"] == 5e-5


def mutate(change):
    def apply(recipe):
        recipe = copy.deepcopy(recipe)
        change(recipe)
        return recipe

    return apply


MALFORMED = {
    "unknown top-level key": (mutate(lambda r: r.update(optimizer={"lr": 1})), r"optimizer: unknown key"),
    "missing tasks": (mutate(lambda r: r.pop("tasks")), r"tasks: missing"),
    "missing target": (mutate(lambda r: r["training"].pop("target_task")), r"training.target_task: missing"),
    "unknown target": (mutate(lambda r: r["training"].update(target_task="nope")), r"training.target_task: 'nope' is not a task"),
    "4.x argument name": (mutate(lambda r: r["training"].update(evaluation_strategy="epoch")), r"training.evaluation_strategy: not a ForkMergeConfig"),
    "wrong type (int)": (mutate(lambda r: r["training"].update(max_steps="ten")), r"training.max_steps: has the wrong type"),
    "wrong type (float)": (mutate(lambda r: r["training"].update(learning_rate=[1])), r"training.learning_rate: has the wrong type"),
    "wrong type (list)": (mutate(lambda r: r["training"].update(topk=3)), r"training.topk: has the wrong type"),
    "bad task type": (mutate(lambda r: r["tasks"]["aux"].update(type="translation")), r"tasks.aux.type: must be one of"),
    "no num_labels": (mutate(lambda r: r["tasks"]["aux"].pop("num_labels")), r"tasks.aux.num_labels"),
    "unknown task key": (mutate(lambda r: r["tasks"]["aux"].update(weight=2)), r"tasks.aux.weight: unknown key"),
    "no data": (mutate(lambda r: r["tasks"]["aux"].pop("data")), r"tasks.aux.data: missing"),
    "unknown corpus": (mutate(lambda r: r["tasks"]["aux"]["data"].update(corpus="imdb")), r"tasks.aux.data.corpus: unknown corpus 'imdb'"),
    "unknown corpus option": (mutate(lambda r: r["tasks"]["aux"]["data"].update(num_train=5)), r"tasks.aux.data.num_train: not an option"),
    "corpus option type": (mutate(lambda r: r["tasks"]["aux"].update(data={"corpus": "subjectivity", "size": "big"})), r"tasks.aux.data.size: must be int"),
    "missing data file": (mutate(lambda r: r["tasks"]["main"]["data"]["files"].update(train="nowhere.csv")), r"tasks.main.data.files.train: no such file: nowhere.csv"),
    "missing label column": (mutate(lambda r: r["tasks"]["main"]["data"].update(label_column="stars")), r"tasks.main.data.label_column: column 'stars' is not in"),
    "missing text column": (mutate(lambda r: r["tasks"]["main"]["data"].update(text_column="review")), r"tasks.main.data.text_column: column 'review' is not in"),
    "target without validation": (mutate(lambda r: r["tasks"]["main"]["data"]["files"].pop("validation")), r"tasks.main.data: the target task needs a validation split"),
    "model path missing": (mutate(lambda r: r["model"].update(name_or_path="./no/such/model")), r"model.name_or_path: no model folder at ./no/such/model"),
    "model and config": (mutate(lambda r: r["model"].update(config={"model_type": "bert"})), r"model: give exactly one of"),
    "config without type": (mutate(lambda r: r.update(model={"config": {"hidden_size": 8}})), r"model.config.model_type: missing"),
    "unknown model key": (mutate(lambda r: r["model"].update(num_hidden_layers=2)), r"model.num_hidden_layers: unknown key"),
    "unknown lora key": (mutate(lambda r: r.update(lora={"rank": 8})), r"lora.rank: not a LoraConfig field"),
    "branch names unknown task": (mutate(lambda r: r["training"].update(branches=[{"main": 1}, {"main": 1, "mian": 1}])), r"training.branches: branch 1 names unknown task 'mian'"),
    "negative max_length": (mutate(lambda r: r.update(max_length=-3)), r"max_length: must be a whole number"),
    "config check of a value": (mutate(lambda r: r["training"].update(fork_interval=0)), r":\d+: training.fork_interval: must be a whole number"),
    "config check of a combination": (mutate(lambda r: r["training"].update(branch_checkpoint="best")), r"training.branch_eval_steps: with branch_checkpoint='best'"),
    "config check of a TrainingArguments field": (mutate(lambda r: r["training"].update(lr_scheduler_type="zigzag")), r":\d+: training.*zigzag"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_recipes_fail_with_one_clear_error(tmp_path, name):
    change, message = MALFORMED[name]
    path = write(tmp_path, change(base_recipe(tmp_path)))
    with pytest.raises(RecipeError, match=message) as error:
        load_recipe(path)
    assert str(error.value).startswith(str(path))


def test_errors_give_the_line_of_the_key(tmp_path):
    text = yaml.safe_dump(base_recipe(tmp_path), sort_keys=False).replace("max_steps: 10", "max_steps: ten")
    path = write(tmp_path, text)
    line = next(i for i, row in enumerate(text.splitlines(), start=1) if "max_steps" in row)
    with pytest.raises(RecipeError, match=rf"^{path}:{line}: training.max_steps"):
        load_recipe(path)


@pytest.mark.parametrize(
    "text, message",
    [("model: [unclosed", "not valid YAML"), ("- a\n- b\n", "recipe: must be a mapping"), ("", "model: missing")],
)
def test_broken_files(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(write(tmp_path, text))


def test_missing_file_and_bad_overrides(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "absent.yaml")
    path = write(tmp_path, base_recipe(tmp_path))
    with pytest.raises(RecipeError, match="override --max_steps: missing its value"):
        load_recipe(path, ["--max_steps"])
    with pytest.raises(RecipeError, match="expected --key value"):
        load_recipe(path, ["max_steps", "3"])
    with pytest.raises(RecipeError, match=r"training.max_steps: has the wrong type"):
        load_recipe(path, ["--max_steps", "many"])


def test_yaml_is_read_safely(tmp_path):
    path = write(tmp_path, "model: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)
