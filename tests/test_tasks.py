import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import default_data_collator

from hf_forkmerge.tasks import (
    Branch,
    BranchSchedule,
    TaskCollator,
    as_task_dataset,
    fork_rounds,
    segment_at,
)


def indexed(size, task):
    return as_task_dataset(task, Dataset.from_dict({"x": list(range(size)), "labels": [0] * size}), None, "train")


def schedule(branches, weighting="loss", steps=6, interval=3, accumulation=1, rank=0, world=1, batch=2):
    datasets = {"main": indexed(10, "main"), "aux": indexed(50, "aux")}
    segments = fork_rounds(steps, interval, range(len(branches)))
    return BranchSchedule(
        datasets, TaskCollator(default_data_collator), branches, segments, batch, accumulation, weighting, 0, rank, world
    )


TWO = [Branch("target", {"main": 1.0}), Branch("joint", {"main": 1.0, "aux": 1.0})]


def test_fork_rounds_cover_the_run_with_a_short_last_round():
    segments = fork_rounds(steps_per_branch=7, fork_interval=3, branches=range(2))
    assert [(s.round, s.branch, s.first_step, s.length, s.timeline_start) for s in segments] == [
        (0, 0, 0, 3, 0), (0, 1, 3, 3, 0), (1, 0, 6, 3, 3), (1, 1, 9, 3, 3), (2, 0, 12, 1, 6), (2, 1, 13, 1, 6),
    ]
    assert segment_at(segments, 13).branch == 1
    with pytest.raises(IndexError):
        segment_at(segments, 14)


def test_schedule_is_deterministic_and_branches_share_the_target_stream():
    first, second = schedule(TWO), schedule(TWO)
    assert len(first) == 12
    items = [first[k] for k in range(len(first))]
    assert all(torch.equal(a["main"]["x"], b["main"]["x"]) for a, b in zip(items, [second[k] for k in range(12)]))
    # Round 0: steps 0-2 are the target branch, 3-5 the joint branch, on the same stretch of the target stream.
    assert set(items[0]) == {"main"} and set(items[3]) == {"main", "aux"}
    for step in range(3):
        assert torch.equal(items[step]["main"]["x"], items[3 + step]["main"]["x"])
    assert items[0]["main"]["task"] == "main"
    # Every pass over the target's 10 rows visits each row once.
    seen = torch.cat([items[k]["main"]["x"] for k in (0, 1, 2, 6, 7)])
    assert sorted(seen.tolist()) == list(range(10))


def test_ranks_take_disjoint_shares_of_each_global_batch():
    shares = [schedule(TWO, rank=r, world=2)[4] for r in range(2)]
    together = torch.cat([s["aux"]["x"] for s in shares])
    assert len(together) == 4 and len(set(together.tolist())) == 4
    alone = schedule(TWO, batch=4)[4]["aux"]["x"]
    assert sorted(together.tolist()) == sorted(alone.tolist())


def test_gradient_accumulation_splits_the_same_examples_into_micro_batches():
    whole = schedule(TWO, batch=4)
    split = schedule(TWO, batch=2, accumulation=2)
    assert len(split) == 2 * len(whole)
    for step in range(len(whole)):
        micro = torch.cat([split[2 * step]["main"]["x"], split[2 * step + 1]["main"]["x"]])
        assert torch.equal(micro, whole[step]["main"]["x"])


def test_sampling_draws_tasks_in_proportion_to_their_weights():
    branches = [Branch("mix", {"main": 1.0, "aux": 3.0})]
    plan = schedule(branches, weighting="sampling", steps=4000, interval=4000)
    tasks = [next(iter(plan.plans[0][k])) for k in range(4000)]
    assert all(len(plan.plans[0][k]) == 1 for k in range(10))
    assert tasks.count("aux") / len(tasks) == pytest.approx(0.75, abs=0.03)


def test_task_collator_rejects_mixed_batches():
    collate = TaskCollator({"a": default_data_collator})
    batch = collate([{"x": 1, "labels": 0, "task": "a"}, {"x": 2, "labels": 1, "task": "a"}])
    assert batch["task"] == "a" and batch["x"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="one task"):
        collate([{"x": 1, "task": "a"}, {"x": 2, "task": "b"}])


def test_task_dataset_checks():
    data = Dataset.from_dict({"input_ids": [[1, 2]], "label": [1], "text": ["hi"]})
    tagged = as_task_dataset("t", data, {"input_ids", "labels", "task"}, "train_dataset")
    assert tagged.column_names == ["input_ids", "labels", "task"]
    with pytest.raises(ValueError, match=r"train_dataset\['t'\]: the dataset is empty"):
        as_task_dataset("t", data.select([]), None, "train_dataset")
    with pytest.raises(ValueError, match=r"train_dataset\['t'\]: no label column"):
        as_task_dataset("t", data.remove_columns("label"), None, "train_dataset")
    with pytest.raises(TypeError, match="datasets.Dataset"):
        as_task_dataset("t", {"label": [1]}, None, "train_dataset")
    with pytest.raises(ValueError, match="no model inputs"):
        as_task_dataset("t", data, {"labels", "task"}, "train_dataset")
    assert np.array_equal(tagged["task"], ["t"])


def test_a_branch_parallel_process_gets_the_batches_its_branch_gets_in_a_sequential_run():
    sequential = schedule(TWO, steps=7)
    datasets = {"main": indexed(10, "main"), "aux": indexed(50, "aux")}
    joint_only = BranchSchedule(
        datasets, TaskCollator(default_data_collator), TWO, fork_rounds(7, 3, [1]), 2, 1, "loss", 0, 0, 1
    )
    assert len(joint_only) == 7
    joint_steps = [3, 4, 5, 9, 10, 11, 13]  # the joint branch's steps of the sequential run
    for parallel_step, sequential_step in enumerate(joint_steps):
        expected, actual = sequential[sequential_step], joint_only[parallel_step]
        assert set(actual) == {"main", "aux"}
        assert all(torch.equal(actual[t]["x"], expected[t]["x"]) for t in actual)
