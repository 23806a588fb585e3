import json

import pytest
import torch
from peft import LoraConfig, PeftModel

from hf_forkmerge import ForkMergeTrainer, MultiTaskModel
from hf_forkmerge.search import SearchResult
from hf_forkmerge.trainer import HISTORY_FILE

from .conftest import make_args, tiny_bert_model, token_task

LORA = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], lora_dropout=0.0)


def lora_trainer(tmp_path, model=None, peft_config=LORA, **fields):
    args = make_args(tmp_path, branch_type="lora", learning_rate=1e-2, max_steps=6, fork_interval=3, **fields)
    return ForkMergeTrainer(
        model=model if model is not None else tiny_bert_model(),
        args=args,
        train_dataset={"main": token_task(64, 0), "aux": token_task(64, 1)},
        eval_dataset={"main": token_task(32, 2)},
        peft_config=peft_config,
    )


def test_lora_branches_train_only_adapters_and_heads_and_reload_with_plain_peft(tmp_path):
    trainer = lora_trainer(tmp_path)
    assert isinstance(trainer.model, PeftModel)
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "heads" in name for name in trainable)
    frozen_before = trainer.model.get_base_model().encoder.embeddings.word_embeddings.weight.clone()
    trainer.train()

    assert len(trainer.merge_history) == 2
    history = json.loads((tmp_path / "out" / HISTORY_FILE).read_text())
    assert all(0.0 <= merge["lora_error_max"] < 1.0 for merge in history["merges"])
    assert torch.equal(trainer.model.get_base_model().encoder.embeddings.word_embeddings.weight, frozen_before)
    states = trainer._optimizer_states
    # The target-only branch never touches the auxiliary head, so it has no optimizer state for it.
    assert states[0] and set(states[0]) < set(states[1])

    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(tiny_bert_model(), tmp_path / "adapter").eval()
    trained = trainer.model.eval()
    ids = torch.randint(1, 60, (4, 6))
    torch.testing.assert_close(reloaded(task="main", input_ids=ids).logits, trained(task="main", input_ids=ids).logits)

    trainer.save_merged_model(str(tmp_path / "merged"))
    plain = MultiTaskModel.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(plain(task="main", input_ids=ids).logits, trained(task="main", input_ids=ids).logits, rtol=1e-4, atol=1e-5)


def test_the_merge_puts_the_nearest_rank_r_update_into_the_adapter(tmp_path):
    class HalfAndHalf(ForkMergeTrainer):
        def search(self, branches):
            self.before = [{k: v.clone() for k, v in slot.items()} for slot in self.store.slots]
            return SearchResult(weights=[0.5, 0.5], score=0.0)

    args = make_args(tmp_path, branch_type="lora", learning_rate=1e-2, max_steps=3, fork_interval=3)
    trainer = HalfAndHalf(
        model=tiny_bert_model(),
        args=args,
        train_dataset={"main": token_task(64, 0), "aux": token_task(64, 1)},
        eval_dataset={"main": token_task(32, 2)},
        peft_config=LORA,
    )
    trainer.train()
    live = dict(trainer.model.named_parameters())
    errors = []
    for key_a in [k for k in live if ".lora_A." in k]:
        key_b = key_a.replace(".lora_A.", ".lora_B.")
        dense = sum(0.5 * slot[key_b] @ slot[key_a] for slot in trainer.before)
        errors.append(((live[key_b] @ live[key_a] - dense).norm() / dense.norm()).item())
    assert max(errors) == pytest.approx(trainer.merge_history[-1]["lora_error_max"], rel=1e-3)
    head = "base_model.model.heads.main.modules_to_save.default.weight"
    torch.testing.assert_close(live[head], 0.5 * (trainer.before[0][head] + trainer.before[1][head]))


@pytest.mark.parametrize(
    "fields, peft_config, message",
    [
        ({}, None, "branch_type: 'lora' needs peft_config"),
        ({}, LoraConfig(r=2, target_modules=["query"], use_dora=True), "DoRA"),
    ],
)
def test_lora_configuration_errors(tmp_path, fields, peft_config, message):
    with pytest.raises(ValueError, match=message):
        lora_trainer(tmp_path, peft_config=peft_config, **fields)


def test_full_branches_refuse_a_peft_model(tmp_path):
    args = make_args(tmp_path)
    with pytest.raises(ValueError, match="branch_type: 'full' would average LoRA factors"):
        ForkMergeTrainer(
            model=tiny_bert_model(),
            args=args,
            train_dataset={"main": token_task(16, 0)},
            eval_dataset={"main": token_task(16, 1)},
            peft_config=LORA,
        )
