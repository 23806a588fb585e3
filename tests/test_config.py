import pytest

from hf_forkmerge import ForkMergeConfig


def config(tmp_path, **fields):
    fields.setdefault("target_task", "main")
    return ForkMergeConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, **fields)


def test_defaults_are_the_papers_two_branches(tmp_path):
    args = config(tmp_path)
    assert args.method == "forkmerge" and args.num_branches == 2
    assert args.merge_grid == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert args.merge_criterion == "loss" and args.task_weighting == "loss"


@pytest.mark.parametrize(
    "fields, field_name",
    [
        ({"target_task": None}, "target_task"),
        ({"target_task": ""}, "target_task"),
        ({"method": "mgda"}, "method"),
        ({"fork_interval": 0}, "fork_interval"),
        ({"task_weighting": "both"}, "task_weighting"),
        ({"merge_grid": []}, "merge_grid"),
        ({"merge_grid": [0.0, 1.5]}, "merge_grid"),
        ({"merge_criterion": "metric"}, "merge_criterion"),
        ({"merge_criterion": "accuracy"}, "merge_criterion"),
        ({"branches": []}, "branches"),
        ({"branches": [{"main": -1}]}, r"branches\[0\]\['main'\]"),
        ({"branches": [{"main": 0}]}, r"branches\[0\]"),
        ({"branches": [{"main": 1}], "topk": [0, 1]}, "branches"),
        ({"method": "stl", "branches": [{"main": 1}]}, "branches/topk"),
        ({"topk": [1]}, "topk"),
        ({"topk": [1, 1]}, "topk"),
        ({"pruning_steps": 0}, "pruning_steps"),
        ({"eval_strategy": "steps", "eval_steps": 150, "fork_interval": 100}, "eval_steps"),
        ({"save_strategy": "steps", "save_steps": 100, "fork_interval": 100}, "save_steps"),
        ({"branch_checkpoint": "first"}, "branch_checkpoint"),
        ({"branch_checkpoint": "best"}, "branch_eval_steps"),
        ({"branch_checkpoint": "best", "branch_eval_steps": 100, "fork_interval": 100}, "branch_eval_steps"),
        ({"branch_checkpoint": "best", "branch_eval_steps": 10, "method": "ew"}, "branch_checkpoint"),
        ({"branch_checkpoint": "best", "branch_eval_steps": 10, "branch_parallel": True}, "branch_checkpoint"),
    ],
)
def test_invalid_combinations_name_the_field(tmp_path, fields, field_name):
    with pytest.raises(ValueError, match=f"^{field_name}"):
        config(tmp_path, **fields)


def test_steps_strategies_on_round_multiples_are_accepted(tmp_path):
    args = config(tmp_path, fork_interval=10, eval_strategy="steps", eval_steps=20, save_strategy="steps", save_steps=40)
    assert args.eval_steps == 20
    # Baselines have no merges, so any step counts are fine there.
    config(tmp_path, method="ew", eval_strategy="steps", eval_steps=7)


def test_branch_counts(tmp_path):
    assert config(tmp_path, branches=[{"main": 1}, {"main": 1, "a": 1}, {"main": 1, "b": 2}]).num_branches == 3
    assert config(tmp_path, topk=[3, 0, 1]).topk == [0, 1, 3]
    assert config(tmp_path, method="stl").num_branches == 1


def test_metric_names_are_tied_to_the_target_task(tmp_path):
    args = config(tmp_path, merge_criterion="metric", metric_for_best_model="accuracy")
    assert args.metric_for_best_model == "main_accuracy" and args.greater_is_better
    args = config(tmp_path, metric_for_best_model="eval_main_loss")
    assert args.metric_for_best_model == "main_loss" and not args.greater_is_better
    args = config(tmp_path, load_best_model_at_end=True, eval_strategy="epoch", save_strategy="epoch")
    assert args.metric_for_best_model == "main_loss"
