import pytest
import torch

from hf_forkmerge import ForkMergeTrainer
from hf_forkmerge.baselines import GCS, PCGradRule, UncertaintyWeighting, gcs_combine

from .conftest import SharedHeadModel, make_args


def test_gcs_drops_a_conflicting_auxiliary_and_keeps_an_aligned_one():
    target = [torch.tensor([1.0, 0.0])]
    aligned, conflicting = [torch.tensor([0.5, 0.5])], [torch.tensor([-1.0, 0.2])]
    combined, kept = gcs_combine(target, [aligned, conflicting])
    assert kept == [True, False]
    torch.testing.assert_close(combined[0], torch.tensor([1.5, 0.5]))
    assert torch.equal(target[0], torch.tensor([1.0, 0.0]))  # inputs untouched


def _two_task_losses(weight):
    # loss_a has gradient g_a = [1, 0] and loss_b has gradient g_b = [-1, 1] with respect to `weight`.
    return {"a": weight @ torch.tensor([1.0, 0.0]), "b": weight @ torch.tensor([-1.0, 1.0])}


def test_gcs_rule_accumulates_the_combined_gradient():
    weight = torch.zeros(2, requires_grad=True)
    rule = GCS()
    rule.backward(_two_task_losses(weight), [weight], target="a", scale=0.5)
    torch.testing.assert_close(weight.grad, torch.tensor([0.5, 0.0]))  # b conflicts (dot -1): dropped
    assert rule.kept_fraction == [0.0]


def test_pcgrad_projects_conflicting_gradients():
    weight = torch.zeros(2, requires_grad=True)
    PCGradRule().backward(_two_task_losses(weight), [weight], target="a", scale=1.0)
    g_a, g_b = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    projected_a = g_a - (g_a @ g_b) / (g_b @ g_b) * g_b  # [0.5, 0.5]
    projected_b = g_b - (g_b @ g_a) / (g_a @ g_a) * g_a  # [0, 1]
    torch.testing.assert_close(weight.grad, projected_a + projected_b)


def test_uncertainty_weighting_learns_its_log_variances():
    weight = torch.zeros(2, requires_grad=True)
    rule = UncertaintyWeighting(["a", "b"])
    rule.backward({"a": (weight - 1).pow(2).sum(), "b": (weight + 3).pow(2).sum()}, [weight], target="a", scale=1.0)
    log_var = rule.scalarizer.log_var
    torch.testing.assert_close(log_var.grad, 0.5 - 0.5 * torch.tensor([2.0, 18.0]))  # d/ds (0.5 e^-s L + 0.5 s)
    assert rule.task_weights() == {"a": 0.5, "b": 0.5}


@pytest.mark.parametrize("method", ["gcs", "pcgrad", "uw"])
def test_gradient_methods_train_in_the_same_trainer(tmp_path, linear_data, method):
    args = make_args(tmp_path, method=method, max_steps=10, learning_rate=0.05)
    trainer = ForkMergeTrainer(
        model=SharedHeadModel(),
        args=args,
        train_dataset={t: linear_data["train"][t] for t in ("main", "helpful", "harmful")},
        eval_dataset=linear_data["eval"],
    )
    before = trainer.evaluate()["eval_main_loss"]
    trainer.train()
    assert trainer.state.global_step == 10 and trainer.merge_history == []
    assert trainer.evaluate()["eval_main_loss"] < before
    logged = [entry for entry in trainer.state.log_history if f"{method}/main_loss" in entry]
    assert logged and f"{method}/harmful_loss" in logged[0]
    if method == "uw":
        groups = trainer.optimizer.param_groups
        assert any(trainer.gradient_rule.scalarizer.log_var is p for g in groups for p in g["params"])
        assert not torch.equal(trainer.gradient_rule.scalarizer.log_var.detach(), torch.zeros(3))


def test_gradient_methods_need_loss_weighting(tmp_path):
    with pytest.raises(ValueError, match="^task_weighting: method 'pcgrad' needs every task"):
        make_args(tmp_path, method="pcgrad", task_weighting="sampling")
