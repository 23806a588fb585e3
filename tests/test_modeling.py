import pytest
import torch
from transformers import AutoModel, ResNetConfig, ViTConfig

from hf_forkmerge import MultiTaskConfig, MultiTaskModel

from .conftest import tiny_bert_model

TASKS = {
    "topic": {"type": "sequence_classification", "num_labels": 3},
    "score": {"type": "regression"},
    "tags": {"type": "token_classification", "num_labels": 4},
}


def test_one_head_per_task_with_its_loss():
    model = tiny_bert_model(tasks=()).eval()
    model = MultiTaskModel.from_encoder(model.encoder, tasks=TASKS)
    ids = torch.randint(1, 60, (2, 5))
    out = model(task="topic", input_ids=ids, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])))
    out = model(task="score", input_ids=ids, labels=torch.tensor([0.5, -1.0]))
    assert out.logits.shape == (2, 1) and out.loss.ndim == 0
    tags = torch.randint(0, 4, (2, 5))
    tags[0, -1] = -100
    out = model(task="tags", input_ids=ids, labels=tags)
    assert out.logits.shape == (2, 5, 4)
    mask = tags != -100
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits[mask], tags[mask]))
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        model(task="nope", input_ids=ids)


def test_mean_pooling_ignores_padding():
    model = tiny_bert_model().eval()
    ids = torch.randint(1, 60, (1, 4))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 4), torch.zeros(1, 3)], dim=1).long()
    short = model(task="main", input_ids=ids, attention_mask=torch.ones(1, 4, dtype=torch.long)).logits
    long = model(task="main", input_ids=padded, attention_mask=mask).logits
    torch.testing.assert_close(short, long, rtol=1e-4, atol=1e-5)


def test_save_and_load_roundtrip(tmp_path):
    model = MultiTaskModel.from_encoder(tiny_bert_model(tasks=()).encoder, tasks=TASKS).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for loaded in (MultiTaskModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, MultiTaskModel) and loaded.config.tasks["score"]["num_labels"] == 1
        ids = torch.randint(1, 60, (2, 5))
        for task in TASKS:
            expected = model(task=task, input_ids=ids).logits
            torch.testing.assert_close(loaded.eval()(task=task, input_ids=ids).logits, expected, rtol=0, atol=1e-6)


def test_from_encoder_keeps_pretrained_weights():
    encoder = tiny_bert_model(seed=3).encoder
    model = MultiTaskModel.from_encoder(encoder, tasks={"a": {"type": "sequence_classification", "num_labels": 2}})
    for (name, theirs), ours in zip(encoder.state_dict().items(), model.encoder.state_dict().values()):
        assert torch.equal(theirs, ours), name


@pytest.mark.parametrize(
    "config",
    [
        ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
    ],
)
def test_image_classification_on_vision_encoders(config):
    encoder = AutoModel.from_config(config)
    tasks = {"digit": {"type": "image_classification", "num_labels": 10}, "rotation": {"type": "image_classification", "num_labels": 4}}
    model = MultiTaskModel.from_encoder(encoder, tasks=tasks)
    assert model.main_input_name == "pixel_values"
    out = model(task="rotation", pixel_values=torch.randn(3, 1, 8, 8), labels=torch.tensor([0, 1, 3]))
    assert out.logits.shape == (3, 4) and torch.isfinite(out.loss)


def test_bad_task_specs_fail_clearly():
    with pytest.raises(ValueError, match=r"tasks\['x'\].type"):
        MultiTaskConfig(tasks={"x": {"type": "translation", "num_labels": 2}})
    with pytest.raises(ValueError, match=r"tasks\['x'\].num_labels"):
        MultiTaskConfig(tasks={"x": {"type": "sequence_classification"}})
    with pytest.raises(ValueError, match="pooling"):
        MultiTaskConfig(tasks={}, pooling="max")
