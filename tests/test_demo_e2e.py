"""End to end on the real demo model and data: the packaged MiniLM encoder and the Rotten Tomatoes corpus."""

import json

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from hf_forkmerge import MultiTaskModel, demo
from hf_forkmerge.recipes import build_data
from hf_forkmerge.trainer import HISTORY_FILE

pytestmark = pytest.mark.e2e


def test_demo_trains_stl_ew_and_forkmerge_and_saves_the_merged_model(tmp_path, capsys):
    results = demo.main(["--steps", "20", "--fork-interval", "10", "--output-dir", str(tmp_path)])
    table = capsys.readouterr().out
    assert "| STL |" in table and "| EW |" in table and "| ForkMerge |" in table
    assert set(results) == {"STL", "EW", "ForkMerge"} and all(0 < r["accuracy"] < 1 for r in results.values())
    assert results["STL"]["merges"] == [] and len(results["ForkMerge"]["merges"]) == 2
    history = json.loads((tmp_path / "forkmerge" / HISTORY_FILE).read_text())
    assert history["merges"] == results["ForkMerge"]["merges"]

    # The saved merged model reloads and scores the test set exactly as the trainer reported.
    model = MultiTaskModel.from_pretrained(tmp_path / "forkmerge").eval()
    assert set(model.config.tasks) == {"sentiment", "subjectivity", "polarity"}
    tokenizer, _, _, tests = build_data(demo.demo_recipe())
    test = tests["sentiment"]
    correct = 0
    for batch in DataLoader(test, batch_size=256, collate_fn=DataCollatorWithPadding(tokenizer)):
        labels = batch.pop("labels")
        with torch.no_grad():
            correct += (model(task="sentiment", **batch).logits.argmax(-1) == labels).sum().item()
    assert correct / len(test) == pytest.approx(results["ForkMerge"]["accuracy"])
