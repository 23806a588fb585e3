"""Multi-task data: branches and their task weights, task-tagged datasets, and the schedule of training batches."""

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset

TASK_COLUMN = "task"


@dataclass(frozen=True)
class Branch:
    """One branch of ForkMerge: a name and the weight of each task it trains on (only positive weights)."""

    name: str
    weights: dict[str, float]

    @property
    def tasks(self) -> list[str]:
        return list(self.weights)


def resolve_branches(args, tasks: list[str], auxiliary_ranking: list[str] | None = None) -> list[Branch]:
    """The branches that `args` asks for, over `tasks` (the target first)."""
    target = args.target_task
    auxiliaries = [task for task in tasks if task != target]
    if args.method == "stl":
        return [Branch("stl", {target: 1.0})]
    if args.method != "forkmerge":  # EW and the gradient-coordination methods: every task, weight 1
        return [Branch(args.method, {task: 1.0 for task in tasks})]
    if args.branches is not None:
        branches = []
        for index, weights in enumerate(args.branches):
            for task in weights:
                if task not in tasks:
                    raise ValueError(f"branches[{index}]: unknown task {task!r}; tasks are {', '.join(tasks)}")
            branches.append(Branch(f"branch{index}", {t: float(w) for t, w in weights.items() if w > 0}))
        return branches
    if args.topk is not None:
        if auxiliary_ranking is None:
            raise ValueError("topk: the auxiliaries must be ranked before the branches are known")
        return [Branch(f"top{k}", {task: 1.0 for task in [target, *auxiliary_ranking[:k]]}) for k in args.topk]
    return [Branch("target", {target: 1.0}), Branch("joint", {task: 1.0 for task in [target, *auxiliaries]})]


def as_task_dataset(task: str, dataset: Dataset, input_names: set[str] | None, split: str) -> Dataset:
    """Check a task's dataset and tag every row with its task; keep only the columns the model accepts."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"{split}[{task!r}]: expected a datasets.Dataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError(f"{split}[{task!r}]: the dataset is empty")
    if "labels" not in dataset.column_names and "label" in dataset.column_names:
        dataset = dataset.rename_column("label", "labels")
    if "labels" not in dataset.column_names:
        raise ValueError(
            f"{split}[{task!r}]: no label column: expected 'labels' or 'label', found {', '.join(dataset.column_names)}"
        )
    if TASK_COLUMN in dataset.column_names:
        if set(dataset.unique(TASK_COLUMN)) != {task}:
            raise ValueError(f"{split}[{task!r}]: its {TASK_COLUMN!r} column names other tasks")
        dataset = dataset.remove_columns(TASK_COLUMN)
    if input_names is not None:
        unused = [column for column in dataset.column_names if column not in input_names]
        dataset = dataset.remove_columns(unused)
    if dataset.column_names == ["labels"]:
        raise ValueError(f"{split}[{task!r}]: no model inputs left beside 'labels' (tokenize or process it first)")
    return dataset.add_column(TASK_COLUMN, [task] * len(dataset))


class TaskCollator:
    """Collates rows of one task with that task's collator and adds the task name to the batch."""

    def __init__(self, collators: Callable | Mapping[str, Callable]):
        self.collators = collators

    def __call__(self, features: list[dict]) -> dict:
        tasks = {feature[TASK_COLUMN] for feature in features}
        if len(tasks) != 1:
            raise ValueError(f"a batch must hold rows of one task, got {sorted(tasks)}")
        (task,) = tasks
        collate = self.collators[task] if isinstance(self.collators, Mapping) else self.collators
        batch = collate([{k: v for k, v in feature.items() if k != TASK_COLUMN} for feature in features])
        batch[TASK_COLUMN] = task
        return batch


@dataclass(frozen=True)
class Segment:
    """A stretch of the Trainer's steps during which one branch trains."""

    round: int
    branch: int
    first_step: int  # the Trainer's global step at which the segment starts
    length: int  # optimizer steps
    timeline_start: int  # where the segment starts on the per-branch schedule (the same for every branch)

    @property
    def end_step(self) -> int:
        return self.first_step + self.length


def fork_rounds(steps_per_branch: int, fork_interval: int, branches: Sequence[int]) -> list[Segment]:
    """The run as fork rounds: in each round each of `branches` in turn trains the same stretch of the schedule.

    A sequential run trains every branch (`range(num_branches)`); a process of a branch-parallel run trains one.
    """
    segments, step = [], 0
    for round_index in range(math.ceil(steps_per_branch / fork_interval)):
        length = min(fork_interval, steps_per_branch - round_index * fork_interval)
        for branch in branches:
            segments.append(Segment(round_index, branch, step, length, round_index * fork_interval))
            step += length
    return segments


def segment_at(segments: list[Segment], step: int) -> Segment:
    """The segment in which the Trainer's step `step` (counted from 0) falls."""
    if not 0 <= step < segments[-1].end_step:
        raise IndexError(f"step {step} is outside the run")
    return segments[bisect.bisect_right([s.first_step for s in segments], step) - 1]


class BranchSchedule(torch.utils.data.Dataset):
    """Micro-batch k of the run -> the collated input of the branch in training then, as `{task: batch}`.

    Every batch is a pure function of k, so the data order is reproducible and independent of prefetching.
    For each task, each branch walks the same seeded stream of shuffled passes over the task's data, so the
    target-only branch and the joint branch see the same target batches. With `weighting="loss"` a step holds one
    batch of every task of the branch; with `"sampling"` one task drawn with probability proportional to its weight.
    Each rank of a data-parallel run takes its share of every global batch.
    """

    def __init__(
        self,
        datasets: Mapping[str, Dataset],
        collator: TaskCollator,
        branches: list[Branch],
        segments: list[Segment],
        batch_size: int,
        gradient_accumulation_steps: int,
        weighting: str,
        seed: int,
        process_index: int = 0,
        num_processes: int = 1,
    ):
        self.datasets = datasets
        self.collator = collator
        self.segments = segments
        self.accumulation = gradient_accumulation_steps
        self.process_index, self.num_processes = process_index, num_processes
        global_batch = batch_size * num_processes
        steps_per_branch = max(s.timeline_start + s.length for s in segments)
        micro_steps = steps_per_branch * gradient_accumulation_steps
        task_seeds = {task: index for index, task in enumerate(datasets)}
        self.plans = [
            _branch_plan(branch, index, datasets, task_seeds, micro_steps, global_batch, weighting, seed)
            for index, branch in enumerate(branches)
        ]

    def __len__(self) -> int:
        return sum(segment.length for segment in self.segments) * self.accumulation

    def __getitem__(self, micro_batch: int) -> dict[str, dict]:
        step, micro = divmod(micro_batch, self.accumulation)
        segment = segment_at(self.segments, step)
        timeline_step = segment.timeline_start + (step - segment.first_step)
        plan = self.plans[segment.branch][timeline_step * self.accumulation + micro]
        batches = {}
        for task, indices in plan.items():
            rows = self.datasets[task][indices[self.process_index :: self.num_processes].tolist()]
            features = [dict(zip(rows, values)) for values in zip(*rows.values())]
            batches[task] = self.collator(features)
        return batches


def _branch_plan(
    branch: Branch,
    branch_index: int,
    datasets: Mapping[str, Dataset],
    task_seeds: dict[str, int],
    micro_steps: int,
    global_batch: int,
    weighting: str,
    seed: int,
) -> list[dict[str, np.ndarray]]:
    streams = {task: _IndexStream(len(datasets[task]), seed, task_seeds[task]) for task in branch.tasks}
    if weighting == "loss":
        return [{task: streams[task].take(global_batch) for task in branch.tasks} for _ in range(micro_steps)]
    probabilities = np.array([branch.weights[task] for task in branch.tasks])
    draws = np.random.default_rng([seed, 1_000 + branch_index]).choice(
        len(branch.tasks), size=micro_steps, p=probabilities / probabilities.sum()
    )
    return [{branch.tasks[d]: streams[branch.tasks[d]].take(global_batch)} for d in draws]


class _IndexStream:
    """Endless shuffled passes over range(size); pass p is shuffled with seed (seed, task, p)."""

    def __init__(self, size: int, seed: int, task_seed: int):
        self.size, self.seed, self.task_seed = size, seed, task_seed
        self.passes = 0
        self.buffer = np.empty(0, dtype=np.int64)

    def take(self, count: int) -> np.ndarray:
        while len(self.buffer) < count:
            order = np.random.default_rng([self.seed, self.task_seed, self.passes]).permutation(self.size)
            self.buffer = np.concatenate([self.buffer, order])
            self.passes += 1
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken
