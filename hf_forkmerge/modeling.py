"""MultiTaskModel: one shared encoder from any `AutoModel`, one head per task."""

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

TASK_TYPES = ("sequence_classification", "regression", "token_classification", "image_classification")
POOLINGS = ("mean", "cls", "pooler")


class MultiTaskConfig(PreTrainedConfig):
    """Config of a [`MultiTaskModel`].

    `tasks` maps each task name to `{"type": one of TASK_TYPES, "num_labels": int}` (regression has one output).
    """

    model_type = "forkmerge-multitask"
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder_config: dict | PreTrainedConfig | None = None
    tasks: dict | None = None
    pooling: str = "mean"
    head_dropout: float = 0.1

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.tasks = {name: dict(spec) for name, spec in (self.tasks or {}).items()}
        for name, spec in self.tasks.items():
            if spec.get("type") not in TASK_TYPES:
                raise ValueError(f"tasks[{name!r}].type: must be one of {', '.join(TASK_TYPES)}, got {spec.get('type')!r}")
            if spec["type"] == "regression":
                spec.setdefault("num_labels", 1)
            if not isinstance(spec.get("num_labels"), int) or spec["num_labels"] < 1:
                raise ValueError(f"tasks[{name!r}].num_labels: must be a whole number >= 1, got {spec.get('num_labels')!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling: must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")


def _encoder_width(config: PreTrainedConfig) -> int:
    if getattr(config, "hidden_size", None):
        return config.hidden_size
    if getattr(config, "hidden_sizes", None):  # convolutional encoders (ResNet, ConvNeXt)
        return config.hidden_sizes[-1]
    raise ValueError(f"cannot tell the output width of a {type(config).__name__} encoder (no hidden_size)")


class MultiTaskModel(PreTrainedModel):
    """A shared encoder under one head per task; `forward(task=..., labels=..., **encoder_inputs)`.

    Build it around a pretrained encoder with [`MultiTaskModel.from_encoder`]; save and load it with
    `save_pretrained` / `from_pretrained` (or `AutoModel.from_pretrained` once `hf_forkmerge` is imported).
    """

    config_class = MultiTaskConfig
    base_model_prefix = "encoder"

    def __init__(self, config: MultiTaskConfig):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder_config)
        self.main_input_name = self.encoder.main_input_name
        width = _encoder_width(config.encoder_config)
        self.dropout = nn.Dropout(config.head_dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(width, spec["num_labels"]) for name, spec in config.tasks.items()})
        self.post_init()

    @classmethod
    def from_encoder(
        cls, encoder: str | PreTrainedModel, tasks: dict, pooling: str = "mean", head_dropout: float = 0.1, **load_kwargs
    ) -> "MultiTaskModel":
        """A model whose encoder carries the pretrained weights of `encoder` (a path, a hub id or a model)."""
        if isinstance(encoder, str):
            encoder = AutoModel.from_pretrained(encoder, **load_kwargs)
        config = MultiTaskConfig(encoder_config=encoder.config, tasks=tasks, pooling=pooling, head_dropout=head_dropout)
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        return model

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear) and any(module is head for head in self.heads.values()):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    @property
    def task_types(self) -> dict[str, str]:
        return {name: spec["type"] for name, spec in self.config.tasks.items()}

    def input_names(self) -> set[str] | None:
        """The columns a batch may carry: the encoder's inputs, `labels` and `task`."""
        import inspect

        parameters = inspect.signature(self.encoder.forward).parameters
        return set(parameters) | {"labels", "task"}

    def forward(self, task: str, labels: torch.Tensor | None = None, **inputs):
        if task not in self.heads:
            raise ValueError(f"unknown task {task!r}: this model has heads for {', '.join(self.heads)}")
        task_type = self.config.tasks[task]["type"]
        outputs = self.encoder(**inputs)
        if task_type == "token_classification":
            logits = self.heads[task](self.dropout(outputs.last_hidden_state))
        else:
            logits = self.heads[task](self.dropout(self._pool(outputs, inputs.get("attention_mask"))))
        loss = None if labels is None else self._loss(task_type, logits, labels)
        output_class = TokenClassifierOutput if task_type == "token_classification" else SequenceClassifierOutput
        return output_class(loss=loss, logits=logits)

    def _pool(self, outputs, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.config.pooling == "pooler":
            return outputs.pooler_output.flatten(1)
        hidden = outputs.last_hidden_state
        if hidden.dim() == 4:  # convolutional feature map (batch, channels, height, width)
            return hidden.mean(dim=(2, 3))
        if self.config.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)

    @staticmethod
    def _loss(task_type: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if task_type == "regression":
            return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        return nn.functional.cross_entropy(logits.flatten(0, -2), labels.flatten().long(), ignore_index=-100)


AutoConfig.register(MultiTaskConfig.model_type, MultiTaskConfig)
AutoModel.register(MultiTaskConfig, MultiTaskModel)
