"""The CLI end to end on a tiny model folder and local CSV files, the card, and the Hub boundary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoModel, BertConfig, BertTokenizerFast

from hf_forkmerge import cards
from hf_forkmerge.cli import main

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "film", "plot", "the", "a"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=15, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    AutoModel.from_config(config).save_pretrained(folder)
    return folder


def write_csv(path: Path, rows: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    lines = ["sentence,label"]
    for _ in range(rows):
        positive = rng.random() < 0.5
        word = rng.choice(WORDS[:3] if positive else WORDS[3:6])
        lines.append(f"the {word} {rng.choice(['film', 'plot'])},{int(positive)}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def recipe_path(tmp_path, tiny_model_dir) -> Path:
    def task(train_seed, with_validation):
        files = {"train": write_csv(tmp_path / f"train{train_seed}.csv", 64, train_seed)}
        if with_validation:
            files["validation"] = write_csv(tmp_path / "validation.csv", 32, 99)
            files["test"] = write_csv(tmp_path / "test.csv", 32, 98)
        return {"type": "sequence_classification", "num_labels": 2, "data": {"files": files, "text_column": "sentence"}}

    recipe = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "max_length": 8,
        "tasks": {"main": task(1, True), "aux": task(2, False)},
        "training": {
            "target_task": "main",
            "fork_interval": 4,
            "max_steps": 8,
            "per_device_train_batch_size": 8,
            "learning_rate": 0.01,
            "output_dir": str(tmp_path / "out"),
            "report_to": [],
            "save_strategy": "no",
            "disable_tqdm": True,
            "use_cpu": True,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_help_is_fast_because_it_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from hf_forkmerge.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "train" in output and "compare" in output and "card" in output
    assert output.strip().splitlines()[-1] == "[]"


def test_train_writes_model_recipe_results_history_and_card(recipe_path, tmp_path, capsys):
    assert main(["train", "--config", str(recipe_path), "--max_steps", "12"]) == 0
    printed = capsys.readouterr().out
    assert "target main on test: loss " in printed and ", accuracy " in printed
    out = tmp_path / "out"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "recipe.yaml", "results.json", "forkmerge_history.json", "README.md", "merge_weights.png"):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "recipe.yaml").read_text())["training"]["max_steps"] == 12  # the override is recorded
    assert len(json.loads((out / "forkmerge_history.json").read_text())["merges"]) == 3
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    metadata = yaml.safe_load(card.split("---")[1])
    assert "base_model" not in metadata  # a local folder is no Hub model id
    assert {"forkmerge", "auxiliary-task-learning"} <= set(metadata["tags"]) and metadata["metrics"] == ["accuracy", "loss"]
    assert "| main | target |" in card and "| aux | auxiliary |" in card
    assert card.count("\n| 2 | 24 |") == 1  # the third merge's row: round 2 at Trainer step 24
    assert "![Merge weights over training](merge_weights.png)" in card and "jiang2023forkmerge" in card
    assert "max_steps: 12" in card
    assert "using hf-forkmerge 0.1.0:" in card  # the version that trained it, no link to a home it does not have

    (out / "README.md").unlink()
    assert main(["card", str(out), "--hub_model_id", "me/tiny-forkmerge"]) == 0
    assert "MultiTaskModel.from_pretrained('me/tiny-forkmerge')" in (out / "README.md").read_text()


def test_recipe_errors_exit_2_before_training(recipe_path, tmp_path, capsys):
    assert main(["train", "--config", str(recipe_path), "--tasks.main.data.label_column", "stars"]) == 2
    assert "tasks.main.data.label_column: column 'stars'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_push_sends_the_model_card_and_plot_to_the_hub_api(recipe_path, tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message, ignore_patterns):
            files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
            calls.append(("upload_folder", repo_id, files, ignore_patterns))

    monkeypatch.setattr(cards, "HfApi", FakeApi)
    assert main(["train", "--config", str(recipe_path), "--push_to_hub", "--hub_model_id", "me/tiny", "--save_strategy", "epoch"]) == 0
    assert calls[1] == ("create_repo", "me/tiny", True)
    _, repo, files, ignored = calls[2]
    assert repo == "me/tiny"
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "merge_weights.png", "forkmerge_history.json"} <= set(files)
    assert any(f.startswith("checkpoint-") for f in files) and "checkpoint-*" in ignored  # checkpoints stay local


def test_offline_push_fails_clearly_and_keeps_the_local_result(recipe_path, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "hf_forkmerge.cli", "train", "--config", str(recipe_path), "--push_to_hub", "--hub_model_id", "me/tiny"]
    finished = subprocess.run(command, capture_output=True, text=True, env=env)
    assert finished.returncode == 1, finished.stderr[-2000:]
    assert "push to the Hub repo 'me/tiny' failed" in finished.stderr
    assert "the trained model is in" in finished.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "README.md").is_file()
    retry = f"hf-forkmerge push {tmp_path / 'out'} --hub_model_id me/tiny"
    assert retry in finished.stderr  # the message says how to push again


def test_push_command_uploads_a_finished_run(recipe_path, tmp_path, monkeypatch, capsys):
    assert main(["train", "--config", str(recipe_path)]) == 0
    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploads.append(("create_repo", repo_id, private, self.token))

        def upload_folder(self, repo_id, folder_path, commit_message, ignore_patterns):
            uploads.append(("upload_folder", repo_id, folder_path))

    monkeypatch.setattr(cards, "HfApi", FakeApi)
    out = tmp_path / "out"
    assert main(["push", str(out), "--hub_model_id", "me/again", "--hub_token", "t0k", "--hub_private_repo"]) == 0
    assert uploads == [("create_repo", "me/again", True, "t0k"), ("upload_folder", "me/again", str(out))]
    assert "MultiTaskModel.from_pretrained('me/again')" in (out / "README.md").read_text()  # the card names the repo
    assert "pushed to me/again" in capsys.readouterr().out

    assert main(["push", str(tmp_path), "--hub_model_id", "me/again"]) == 2  # not a run's folder: nothing is sent
    assert "no forkmerge_history.json" in capsys.readouterr().err and len(uploads) == 2


def test_train_under_torchrun_in_branch_parallel_mode(recipe_path, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*launcher, "-m", "hf_forkmerge.cli", "train", "--config", str(recipe_path), "--branch_parallel", "true", "--ddp_backend", "gloo"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("target main on test:") == 1  # printed by the main process only
    out = tmp_path / "out"
    assert len(json.loads((out / "forkmerge_history.json").read_text())["merges"]) == 2
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"][0]["metrics"]) == {"accuracy", "loss"}  # the Trainer's timings are no scores


def test_compare_trains_every_method_on_one_budget(recipe_path, tmp_path, capsys):
    assert main(["compare", "--config", str(recipe_path)]) == 0
    table = capsys.readouterr().out
    methods = ["STL", "EW", "GCS", "PCGrad", "UW", "ForkMerge"]
    assert all(f"| {method} |" in table for method in methods)
    out = tmp_path / "out"
    comparison = json.loads((out / "comparison.json").read_text())
    assert [row["method"] for row in comparison["methods"]] == methods
    assert (out / "comparison.png").is_file() and (out / "comparison.md").read_text().startswith("Target `main`")
    assert "| STL |" in (out / "forkmerge" / "README.md").read_text()  # the card shows the comparison
