import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import AutoModel, BertConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hf_forkmerge import ForkMergeConfig, MultiTaskModel  # noqa: E402

FEATURES = 8


class SharedHeadModel(nn.Module):
    """A user model (not a MultiTaskModel): every task shares one linear classifier, so an auxiliary's labels act
    directly on the target's weights. Its forward takes the task name and returns a loss, as ForkMerge needs."""

    def __init__(self, seed: int = 0, dropout: float = 0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.classifier = nn.Linear(FEATURES, 2)
        self.dropout = nn.Dropout(dropout)

    def forward(self, task, features, labels=None):
        logits = self.classifier(self.dropout(features))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


def linear_task(size: int, seed: int, label_noise: float = 0.0) -> Dataset:
    """x ~ N(0, I); label = [x . w > 0] for a fixed w; a fraction `label_noise` of labels redrawn at random."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, FEATURES)).astype(np.float32)
    direction = np.linspace(1.0, -1.0, FEATURES)
    labels = (x @ direction > 0).astype(int)
    noisy = rng.random(size) < label_noise
    labels[noisy] = rng.integers(0, 2, noisy.sum())
    return Dataset.from_dict({"features": x.tolist(), "labels": labels.tolist()})


@pytest.fixture
def linear_data():
    return {
        "train": {
            "main": linear_task(24, seed=1),
            "helpful": linear_task(512, seed=2),
            "harmful": linear_task(512, seed=3, label_noise=1.0),
        },
        "eval": {"main": linear_task(512, seed=4)},
    }


def tiny_bert_model(tasks=("main", "aux"), seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    encoder = AutoModel.from_config(config)
    specs = {task: {"type": "sequence_classification", "num_labels": 2} for task in tasks}
    return MultiTaskModel.from_encoder(encoder, tasks=specs, head_dropout=0.0)


def token_task(size: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 60, size=(size, 6))
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist(), "label": (ids[:, 0] > 30).astype(int).tolist()}
    )


def make_args(tmp_path, **overrides) -> ForkMergeConfig:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        target_task="main",
        fork_interval=5,
        max_steps=10,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=64,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        logging_steps=5,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    defaults.update(overrides)
    return ForkMergeConfig(**defaults)
