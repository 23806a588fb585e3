import json
import shutil

import pytest
import torch
from transformers import TrainerCallback

from hf_forkmerge import ForkMergeTrainer, MultiTaskModel
from hf_forkmerge.search import SearchResult
from hf_forkmerge.trainer import HISTORY_FILE

from .conftest import SharedHeadModel, linear_task, make_args, tiny_bert_model, token_task


def run(tmp_path, data, tasks, model=None, **fields):
    args = make_args(tmp_path, **fields)
    trainer = ForkMergeTrainer(
        model=model or SharedHeadModel(),
        args=args,
        train_dataset={task: data["train"][task] for task in tasks},
        eval_dataset=data["eval"],
    )
    trainer.train()
    return trainer


def weights_of(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def joint_weight_and_losses(tmp_path, auxiliary, seed):
    """One STL and one ForkMerge run on a small target (24 examples) with one auxiliary sharing its head."""
    data = {
        "train": {"main": linear_task(24, seed=1 + 10 * seed), auxiliary: linear_task(512, seed=2, label_noise=1.0 if auxiliary == "harmful" else 0.0)},
        "eval": {"main": linear_task(512, seed=4)},
    }
    fields = dict(max_steps=20, learning_rate=0.02, seed=seed)
    stl = run(tmp_path / f"stl{seed}", data, ["main", auxiliary], model=SharedHeadModel(seed), method="stl", **fields)
    forkmerge = run(tmp_path / f"fm{seed}", data, ["main", auxiliary], model=SharedHeadModel(seed), **fields)
    mean_weight = sum(m["weights"][1] for m in forkmerge.merge_history) / len(forkmerge.merge_history)
    return mean_weight, forkmerge.evaluate()["eval_main_loss"], stl.evaluate()["eval_main_loss"]


SEEDS = range(4)


def test_planted_harmful_auxiliary_gets_weight_near_zero(tmp_path):
    runs = [joint_weight_and_losses(tmp_path, "harmful", seed) for seed in SEEDS]
    assert sum(weight for weight, _, _ in runs) / len(runs) <= 0.15  # random labels: joint updates rejected
    fm_loss = sum(loss for _, loss, _ in runs) / len(runs)
    stl_loss = sum(loss for _, _, loss in runs) / len(runs)
    assert fm_loss <= stl_loss + 0.02  # not worse than training the target alone, up to noise


def test_helpful_auxiliary_gets_weight_and_beats_stl(tmp_path):
    runs = [joint_weight_and_losses(tmp_path, "helpful", seed) for seed in SEEDS]
    assert all(weight > 0 for weight, _, _ in runs)
    assert all(fm_loss < stl_loss for _, fm_loss, stl_loss in runs)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_rejecting_every_joint_update_leaves_the_target_branch_on_stl_s_path(tmp_path, linear_data, dropout):
    fields = dict(max_steps=20, learning_rate=0.02)
    model = lambda: SharedHeadModel(dropout=dropout)  # noqa: E731
    stl = run(tmp_path / "stl", linear_data, ["main", "harmful"], model=model(), method="stl", **fields)
    forkmerge = run(tmp_path / "fm", linear_data, ["main", "harmful"], model=model(), **fields)
    assert all(merge["weights"] == [1.0, 0.0] for merge in forkmerge.merge_history)
    # Same target data stream, and the target branch's own optimizer and random state: bit for bit the STL run.
    for name, tensor in weights_of(stl.model).items():
        assert torch.equal(weights_of(forkmerge.model)[name], tensor)


def test_each_branch_keeps_its_own_optimizer_state_across_merges(tmp_path, linear_data):
    trainer = run(tmp_path, linear_data, ["main", "helpful"], max_steps=15, fork_interval=5)
    states = trainer._optimizer_states
    assert len(states) == 2 and all(state for state in states)
    weight = trainer.model.classifier.weight
    # Adam counted every step of each branch over the 3 rounds: its state was never reset by a merge.
    assert [float(state[weight]["step"]) for state in states] == [15.0, 15.0]
    assert not torch.allclose(states[0][weight]["exp_avg"], states[1][weight]["exp_avg"])
    assert trainer.state.global_step == 30


def test_merge_writes_the_weighted_sum_into_every_branch(tmp_path, linear_data):
    class FixedWeights(ForkMergeTrainer):
        def search(self, branches):
            self.before_merge = [{k: v.clone() for k, v in slot.items()} for slot in self.store.slots]
            return SearchResult(weights=[0.25, 0.75], score=0.0)

    args = make_args(tmp_path, max_steps=5, fork_interval=5)
    trainer = FixedWeights(
        model=SharedHeadModel(),
        args=args,
        train_dataset={t: linear_data["train"][t] for t in ("main", "helpful")},
        eval_dataset=linear_data["eval"],
    )
    trainer.train()
    live = weights_of(trainer.model)
    for name in ("classifier.weight", "classifier.bias"):
        expected = 0.25 * trainer.before_merge[0][name] + 0.75 * trainer.before_merge[1][name]
        torch.testing.assert_close(live[name], expected, rtol=0, atol=1e-7)
        assert all(torch.equal(slot[name], live[name]) for slot in trainer.store.slots)
    assert not torch.equal(trainer.before_merge[0]["classifier.weight"], trainer.before_merge[1]["classifier.weight"])


def test_merge_history_is_logged_and_written(tmp_path, linear_data):
    trainer = run(tmp_path, linear_data, ["main", "helpful"], max_steps=10)
    history = json.loads((tmp_path / "out" / HISTORY_FILE).read_text())
    assert [b["name"] for b in history["branches"]] == ["target", "joint"]
    assert len(history["merges"]) == 2
    merge = history["merges"][0]
    assert merge["step"] == 10 and merge["criterion"] == "loss" and sum(merge["weights"]) == pytest.approx(1.0)
    assert len(merge["candidates"]) == 7
    assert merge["score"] == min(c["score"] for c in merge["candidates"])
    logged = [entry["forkmerge_merge"] for entry in trainer.state.log_history if "forkmerge_merge" in entry]
    assert logged == history["merges"]
    scalars = [entry for entry in trainer.state.log_history if "merge/score" in entry]
    assert scalars[0]["merge/weight/joint"] == merge["weights"][1]
    losses = [entry for entry in trainer.state.log_history if "joint/helpful_loss" in entry]
    assert losses and "joint/main_loss" in losses[0]
    assert any("target/main_loss" in entry for entry in trainer.state.log_history)


def test_best_branch_checkpoint_merges_each_branch_at_its_best_scored_step(tmp_path, linear_data):
    class Recording(ForkMergeTrainer):
        scored, before_merge = [], []

        def score_branch(self):
            super().score_branch()
            self.scored.append((self.state.global_step, self._score_live_model(), weights_of(self.model)))

        def search(self, branches):
            self.before_merge.append([{k: v.clone() for k, v in slot.items()} for slot in self.store.slots])
            return super().search(branches)

    fork_interval, eval_steps = 6, 2
    args = make_args(tmp_path, max_steps=12, fork_interval=fork_interval, learning_rate=0.5, branch_checkpoint="best",
                     branch_eval_steps=eval_steps)
    trainer = Recording(
        model=SharedHeadModel(),
        args=args,
        train_dataset={t: linear_data["train"][t] for t in ("main", "harmful")},
        eval_dataset=linear_data["eval"],
    )
    trainer.train()
    assert [step for step, _, _ in trainer.scored] == list(range(eval_steps, 25, eval_steps))  # 3 scores per stretch
    rolled_back = 0
    for round_index, merge in enumerate(trainer.merge_history):
        for branch in range(2):
            first = (2 * round_index + branch) * fork_interval
            stretch = [entry for entry in trainer.scored if first < entry[0] <= first + fork_interval]
            step, _, weights = min(stretch, key=lambda entry: entry[1])
            assert merge["kept_steps"][branch] == step
            for name, tensor in weights.items():
                assert torch.equal(trainer.before_merge[round_index][branch][name], tensor)
            rolled_back += step != first + fork_interval
    assert rolled_back  # some branch was merged at a state before the end of its stretch


def test_metric_criterion(tmp_path, linear_data):
    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    args = make_args(tmp_path, max_steps=10, merge_criterion="metric", metric_for_best_model="accuracy")
    trainer = ForkMergeTrainer(
        model=SharedHeadModel(),
        args=args,
        train_dataset={t: linear_data["train"][t] for t in ("main", "harmful")},
        eval_dataset=linear_data["eval"],
        compute_metrics=accuracy,
    )
    trainer.train()
    merge = trainer.merge_history[-1]
    assert merge["criterion"] == "main_accuracy"
    assert merge["score"] == max(c["score"] for c in merge["candidates"])
    assert merge["score"] == pytest.approx(trainer.evaluate()["eval_main_accuracy"])


def test_trainer_contract_eval_save_load_and_callbacks(tmp_path):
    class Counter(TrainerCallback):
        steps = evaluations = saves = 0

        def on_step_end(self, args, state, control, **kwargs):
            Counter.steps += 1

        def on_evaluate(self, args, state, control, **kwargs):
            Counter.evaluations += 1

        def on_save(self, args, state, control, **kwargs):
            Counter.saves += 1

    args = make_args(tmp_path, max_steps=9, fork_interval=3, eval_strategy="epoch", save_strategy="epoch", learning_rate=1e-2)
    trainer = ForkMergeTrainer(
        model=tiny_bert_model(),
        args=args,
        train_dataset={"main": token_task(64, 0), "aux": token_task(64, 1)},
        eval_dataset={"main": token_task(32, 2), "aux": token_task(32, 3)},
        callbacks=[Counter()],
    )
    trainer.train()
    # Evaluation (of both tasks) and checkpoints after each of the 3 merges; the last one ends the Trainer's epoch.
    assert (Counter.steps, Counter.evaluations, Counter.saves) == (18, 2 * 3, 3)
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-18", "checkpoint-6"]
    metrics = trainer.evaluate()
    assert {"eval_main_loss", "eval_aux_loss"} <= set(metrics)
    assert metrics["eval_main_loss"] == pytest.approx(trainer.merge_history[-1]["score"])
    trainer.save_model(str(tmp_path / "final"))
    reloaded = MultiTaskModel.from_pretrained(tmp_path / "final")
    reloaded_weights = reloaded.state_dict()
    assert all(torch.equal(reloaded_weights[name], tensor) for name, tensor in trainer.model.state_dict().items())


def test_load_best_model_at_end_gives_the_best_merge(tmp_path, linear_data):
    trainer = run(
        tmp_path,
        linear_data,
        ["main", "helpful"],
        max_steps=20,
        learning_rate=0.5,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
    )
    scores = [merge["score"] for merge in trainer.merge_history]
    assert trainer.evaluate()["eval_main_loss"] == pytest.approx(min(scores))


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, linear_data):
    whole = run(tmp_path / "a", linear_data, ["main", "helpful"], per_device_train_batch_size=8)
    accumulated = run(tmp_path / "b", linear_data, ["main", "helpful"], per_device_train_batch_size=4, gradient_accumulation_steps=2)
    for name, tensor in weights_of(whole.model).items():
        torch.testing.assert_close(weights_of(accumulated.model)[name], tensor, rtol=1e-5, atol=1e-6)


def test_offloading_inactive_branches_changes_nothing(tmp_path, linear_data):
    kept = run(tmp_path / "a", linear_data, ["main", "helpful"])
    offloaded = run(tmp_path / "b", linear_data, ["main", "helpful"], offload_inactive_branches=True)
    assert all(slot[name].device.type == "cpu" for slot in offloaded.store.slots for name in slot)
    for name, tensor in weights_of(kept.model).items():
        assert torch.equal(weights_of(offloaded.model)[name], tensor)


def test_baselines_are_one_setting_away(tmp_path, linear_data):
    ew = run(tmp_path / "ew", linear_data, ["main", "helpful", "harmful"], method="ew")
    assert [b.name for b in ew.branches] == ["ew"] and ew.merge_history == []
    assert ew.state.global_step == 10
    assert any({"ew/main_loss", "ew/helpful_loss", "ew/harmful_loss"} <= set(e) for e in ew.state.log_history)


def test_sampling_weights_train_one_task_per_step(tmp_path, linear_data):
    trainer = run(
        tmp_path,
        linear_data,
        ["main", "helpful"],
        task_weighting="sampling",
        branches=[{"main": 1}, {"main": 1, "helpful": 3}],
    )
    assert [b.weights for b in trainer.branches] == [{"main": 1.0}, {"main": 1.0, "helpful": 3.0}]
    assert len(trainer.merge_history) == 2


def test_topk_ranks_auxiliaries_with_short_runs(tmp_path, linear_data):
    trainer = run(tmp_path, linear_data, ["main", "harmful", "helpful"], topk=[0, 1], pruning_steps=10)
    assert [entry["task"] for entry in trainer.auxiliary_ranking] == ["helpful", "harmful"]
    assert [b.weights for b in trainer.branches] == [{"main": 1.0}, {"main": 1.0, "helpful": 1.0}]
    history = json.loads((tmp_path / "out" / HISTORY_FILE).read_text())
    assert history["auxiliary_ranking"][0]["task"] == "helpful"


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a, t, e: (a(target_task="nope"), t, e), ValueError, "target_task: 'nope' is not a task"),
        (lambda a, t, e: (a(), t, {"helpful": e["main"]}), ValueError, "eval_dataset: holds no validation set for the target"),
        (lambda a, t, e: (a(), {**t, "helpful": t["helpful"].select([])}, e), ValueError, r"train_dataset\['helpful'\]: the dataset is empty"),
        (lambda a, t, e: (a(), {**t, "helpful": t["helpful"].remove_columns("labels")}, e), ValueError, r"train_dataset\['helpful'\]: no label column"),
        (lambda a, t, e: (a(fork_interval=50, max_steps=20), t, e), ValueError, "fork_interval: 50 steps is longer than the run"),
        (lambda a, t, e: (a(branches=[{"main": 1}, {"mian": 1}]), t, e), ValueError, r"branches\[1\]: unknown task 'mian'"),
        (lambda a, t, e: (a(topk=[0, 3]), t, e), ValueError, "topk: asks for 3 auxiliaries but there are 1"),
        (lambda a, t, e: (a(), list(t.values()), e), TypeError, "train_dataset: expected"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, linear_data, change, error, message):
    train = {t: linear_data["train"][t] for t in ("main", "helpful")}
    args, train, evals = change(lambda **f: make_args(tmp_path, **f), train, dict(linear_data["eval"]))
    with pytest.raises(error, match=message):
        ForkMergeTrainer(model=SharedHeadModel(), args=args, train_dataset=train, eval_dataset=evals)


def test_evaluating_an_unknown_task_or_resuming_fails_clearly(tmp_path, linear_data):
    trainer = run(tmp_path, linear_data, ["main", "helpful"])
    with pytest.raises(ValueError, match="unknown task 'other'"):
        trainer.evaluate({"other": linear_data["eval"]["main"]})
    with pytest.raises(ValueError, match="eval_dataset: evaluate a"):
        trainer.evaluate(linear_data["eval"]["main"])
    with pytest.raises(ValueError, match="resume_from_checkpoint"):
        trainer.train(resume_from_checkpoint=True)


def test_predict_one_task(tmp_path, linear_data):
    trainer = run(tmp_path, linear_data, ["main", "helpful"])
    output = trainer.predict({"main": linear_data["eval"]["main"]})
    assert output.predictions.shape == (512, 2) and output.label_ids.shape == (512,)
    assert output.metrics["test_main_loss"] == pytest.approx(trainer.evaluate()["eval_main_loss"])
    with pytest.raises(ValueError, match="one task at a time"):
        trainer.predict(linear_data["eval"]["main"])


class PoisonedAuxiliaryModel(SharedHeadModel):
    """The auxiliary task's loss is NaN, so the joint branch's shared weights become NaN at its first step."""

    def forward(self, task, features, labels=None):
        outputs = super().forward(task, features, labels)
        if task == "helpful" and labels is not None:
            outputs["loss"] = outputs["loss"] * float("nan")
        return outputs


def test_a_diverged_branch_is_left_out_of_the_merge_and_training_goes_on(tmp_path, linear_data):
    stl = run(tmp_path / "stl", linear_data, ["main", "helpful"], method="stl", max_steps=10)
    with pytest.warns(RuntimeWarning, match="branch joint has non-finite weights"):
        trainer = run(tmp_path / "fm", linear_data, ["main", "helpful"], model=PoisonedAuxiliaryModel(), max_steps=10)
    assert [m["diverged"] for m in trainer.merge_history] == [["joint"], ["joint"]]
    assert [m["weights"] for m in trainer.merge_history] == [[1.0, 0.0], [1.0, 0.0]]
    # The target branch went on as STL would; its optimizer state survived, the joint branch's was reset.
    for name, tensor in weights_of(trainer.model).items():
        torch.testing.assert_close(tensor, weights_of(stl.model)[name])


def test_training_stops_clearly_when_every_branch_diverges(tmp_path, linear_data):
    with pytest.raises(FloatingPointError, match="every branch \\(target, joint\\) has non-finite weights"):
        run(tmp_path, linear_data, ["main", "helpful"], model=PoisonedAuxiliaryModel(), learning_rate=float("inf"))


def trainer_for(tmp_path, linear_data, **fields):
    return ForkMergeTrainer(
        model=SharedHeadModel(),
        args=make_args(tmp_path, **fields),
        train_dataset={t: linear_data["train"][t] for t in ("main", "helpful")},
        eval_dataset=linear_data["eval"],
    )


def test_a_full_disk_is_reported_before_training(tmp_path, linear_data, monkeypatch):
    monkeypatch.setattr("hf_forkmerge.files.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OSError, match=r"output_dir: .*out has 0 MiB free, but saving this run needs about"):
        trainer_for(tmp_path, linear_data, save_strategy="epoch")


def test_an_unwritable_output_dir_is_reported_before_training(tmp_path, linear_data):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match=r"output_dir: cannot write to .*a_file/out: Not a directory"):
        trainer_for(tmp_path, linear_data, output_dir=str(tmp_path / "a_file" / "out"))


def test_sharded_training_is_refused_clearly_where_branches_need_whole_tensors(tmp_path, linear_data, monkeypatch):
    # FSDP cannot start on CPU, so the Trainer is made to believe that accelerate set it up.
    create = ForkMergeTrainer.create_accelerator_and_postprocess

    def with_fsdp(self):
        create(self)
        self.is_fsdp_enabled = True

    monkeypatch.setattr(ForkMergeTrainer, "create_accelerator_and_postprocess", with_fsdp)
    with pytest.raises(ValueError, match="method: 'forkmerge' with FSDP or DeepSpeed is not supported yet"):
        trainer_for(tmp_path, linear_data)
    assert trainer_for(tmp_path, linear_data, method="ew").is_fsdp_enabled  # the single-branch baselines run as usual
