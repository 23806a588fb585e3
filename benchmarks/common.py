"""Pieces shared by the benchmark scripts (imported as `common`: the scripts run from this folder)."""

import statistics
import tempfile
import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, from its first forward to the optimizer's update."""

    def __init__(self):
        self.durations, self.start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append(time.perf_counter() - self.start)

    def median(self) -> float:
        return statistics.median(self.durations[2:])  # the first steps warm up the allocator


def time_merges(trainer) -> list[float]:
    """Wrap `trainer.merge` (search + merge) to record how long each one takes; returns the list it fills."""
    seconds, merge = [], trainer.merge

    def timed_merge(round_index):
        start = time.perf_counter()
        merge(round_index)
        seconds.append(time.perf_counter() - start)

    trainer.merge = timed_merge
    return seconds


class TaskPadding:
    """A plain Trainer's collator for a MultiTaskModel trained on one task: pad, and name the task."""

    def __init__(self, pad, task: str):
        self.pad, self.task = pad, task

    def __call__(self, features):
        batch = self.pad([{k: v for k, v in f.items() if k != "task"} for f in features])
        batch["task"] = self.task
        return batch


def training_kwargs(**fields) -> dict:
    """TrainingArguments fields every benchmarked run shares: quiet, no checkpoints, CPU, a fresh output folder."""
    defaults = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=128,
        learning_rate=1e-4,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        logging_steps=10_000,
    )
    return {**defaults, **fields}
