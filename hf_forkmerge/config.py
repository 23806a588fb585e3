"""ForkMergeConfig: TrainingArguments plus the fields of the ForkMerge method."""

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from .search import DEFAULT_GRID

METHODS = ("forkmerge", "stl", "ew", "gcs", "pcgrad", "uw")
GRADIENT_METHODS = ("gcs", "pcgrad", "uw")


@dataclass
class ForkMergeConfig(TrainingArguments):
    """Training arguments for [`ForkMergeTrainer`].

    Every `TrainingArguments` field keeps its meaning, with three ForkMerge readings:
    - `max_steps` (or `num_train_epochs`, counted over the target task's training set) is the length of the run
      per branch: each branch takes that many optimizer steps, as STL or EW would. The Trainer's `global_step`
      counts the optimizer steps of all branches together.
    - `eval_strategy="epoch"` / `save_strategy="epoch"` evaluate / save right after every merge.
    - with `"steps"`, `eval_steps` and `save_steps` count the Trainer's steps and must be multiples of one fork
      round (number of branches x `fork_interval`), so that every evaluation and checkpoint sees a merged model.
      With `branch_parallel` the branches train at the same time: `global_step` counts the steps of one branch
      and a round is `fork_interval` steps.
    """

    target_task: str | None = field(default=None, metadata={"help": "Name of the target task (a key of train_dataset)."})
    method: Literal["forkmerge", "stl", "ew", "gcs", "pcgrad", "uw"] = field(
        default="forkmerge",
        metadata={"help": "forkmerge; or a baseline on the same data and budget: stl (target only), ew (all tasks, equal weights), gcs, pcgrad, uw (gradient coordination over all tasks)."},
    )
    fork_interval: int = field(default=100, metadata={"help": "Optimizer steps each branch trains between two merges."})
    branches: list[dict[str, float]] | None = field(
        default=None,
        metadata={"help": "Task weights per branch, e.g. [{'sst': 1}, {'sst': 1, 'aux': 0.5}]. Default: target only, and target + all auxiliaries."},
    )
    topk: list[int] | None = field(
        default=None,
        metadata={"help": "Nested branches target + top-k auxiliaries (e.g. [0, 1, 3]), auxiliaries ranked by a short run of target + each one."},
    )
    pruning_steps: int = field(default=100, metadata={"help": "Optimizer steps of each ranking run used by `topk`."})
    task_weighting: Literal["loss", "sampling"] = field(
        default="loss",
        metadata={"help": "loss: each step sums weighted losses of one batch per task; sampling: each step trains one task drawn with probability proportional to its weight."},
    )
    merge_grid: list[float] = field(
        default_factory=lambda: list(DEFAULT_GRID), metadata={"help": "Alphas tried for each branch by the greedy merge search."}
    )
    merge_criterion: Literal["loss", "metric"] = field(
        default="loss",
        metadata={"help": "loss: target validation loss; metric: `metric_for_best_model` with `greater_is_better`."},
    )
    save_strategy: str = field(
        default="epoch", metadata={"help": "As in TrainingArguments; with ForkMerge the default 'epoch' saves after every merge."}
    )
    branch_type: Literal["full", "lora"] = field(
        default="full",
        metadata={"help": "full: a branch is a copy of the trainable weights; lora: a branch is a LoRA adapter on one frozen base (pass peft_config to the trainer)."},
    )
    branch_checkpoint: Literal["last", "best"] = field(
        default="last",
        metadata={"help": "Which state of each branch enters the merge: the last of its stretch, or the best on the target's validation set among those scored every branch_eval_steps (and at the end of the stretch), as the reference code merges each branch's best checkpoint."},
    )
    branch_eval_steps: int | None = field(
        default=None, metadata={"help": "With branch_checkpoint='best': score the branch in training every this many of its optimizer steps."}
    )
    offload_inactive_branches: bool = field(
        default=False, metadata={"help": "Keep the weights and optimizer state of branches not in training on the CPU."}
    )
    branch_parallel: bool = field(
        default=False,
        metadata={"help": "Train the branches at the same time, one group of processes per branch (the number of processes must be a multiple of the number of branches); the merge gathers their weights."},
    )

    def __post_init__(self):
        if not self.target_task:
            raise ValueError("target_task: name the target task (a key of train_dataset)")
        if self.metric_for_best_model is None and (self.load_best_model_at_end or self.save_strategy == "best"):
            self.metric_for_best_model = "loss"
        if self.metric_for_best_model:
            # Evaluation datasets are keyed by task, so every eval metric is named eval_<task>_<metric>.
            bare = self.metric_for_best_model.removeprefix("eval_")
            if not bare.startswith(f"{self.target_task}_"):
                bare = f"{self.target_task}_{bare}"
            self.metric_for_best_model = bare
        super().__post_init__()
        self._validate_method()

    def _validate_method(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.branch_type not in ("full", "lora"):
            raise ValueError(f"branch_type: must be 'full' or 'lora', got {self.branch_type!r}")
        if self.task_weighting not in ("loss", "sampling"):
            raise ValueError(f"task_weighting: must be 'loss' or 'sampling', got {self.task_weighting!r}")
        if self.method in GRADIENT_METHODS and self.task_weighting != "loss":
            raise ValueError(f"task_weighting: method {self.method!r} needs every task in every step: use 'loss'")
        if self.merge_criterion not in ("loss", "metric"):
            raise ValueError(f"merge_criterion: must be 'loss' or 'metric', got {self.merge_criterion!r}")
        if self.merge_criterion == "metric" and not self.metric_for_best_model:
            raise ValueError("merge_criterion: 'metric' needs metric_for_best_model (and greater_is_better)")
        if not isinstance(self.fork_interval, int) or self.fork_interval < 1:
            raise ValueError(f"fork_interval: must be a whole number of optimizer steps >= 1, got {self.fork_interval!r}")
        if self.pruning_steps < 1:
            raise ValueError(f"pruning_steps: must be >= 1, got {self.pruning_steps}")
        if not self.merge_grid or any(not 0 <= alpha <= 1 for alpha in self.merge_grid):
            raise ValueError(f"merge_grid: must be a non-empty list of numbers in [0, 1], got {self.merge_grid!r}")
        if self.method != "forkmerge" and (self.branches is not None or self.topk is not None):
            raise ValueError(f"branches/topk: only for method 'forkmerge'; method {self.method!r} fixes its own task weights")
        if self.branches is not None and self.topk is not None:
            raise ValueError("branches: give either branches or topk, not both")
        if self.branches is not None:
            self._validate_branches()
        if self.topk is not None:
            if len(self.topk) < 2 or len(set(self.topk)) != len(self.topk) or any(k < 0 for k in self.topk):
                raise ValueError(f"topk: needs at least two distinct counts >= 0, e.g. [0, 1, 3]; got {self.topk!r}")
            self.topk = sorted(self.topk)
        if self.branch_parallel and self.method != "forkmerge":
            raise ValueError(f"branch_parallel: only for method 'forkmerge'; method {self.method!r} trains one branch")
        if self.branch_checkpoint not in ("last", "best"):
            raise ValueError(f"branch_checkpoint: must be 'last' or 'best', got {self.branch_checkpoint!r}")
        if self.branch_checkpoint == "best":
            self._validate_best_branch_checkpoint()
        if self.branch_parallel and self.offload_inactive_branches:
            raise ValueError(
                "offload_inactive_branches: not with branch_parallel: the merge exchanges the branches between "
                "processes from the device"
            )
        if self.method == "forkmerge":
            round_steps = self.fork_interval * (1 if self.branch_parallel else self.num_branches)
            for strategy, steps_field in (("eval_strategy", "eval_steps"), ("save_strategy", "save_steps")):
                steps = getattr(self, steps_field)
                if getattr(self, strategy) == "steps" and steps % round_steps != 0:
                    raise ValueError(
                        f"{steps_field}: must be a multiple of one fork round ({round_steps} steps: fork_interval "
                        f"{self.fork_interval} x {round_steps // self.fork_interval} branches trained one after the "
                        f"other) so that it falls on a merge, got "
                        f"{steps}; or use {strategy}='epoch' to act after every merge"
                    )

    def _validate_best_branch_checkpoint(self) -> None:
        if self.method != "forkmerge":
            raise ValueError(f"branch_checkpoint: 'best' is for method 'forkmerge'; method {self.method!r} never merges")
        if self.branch_parallel:
            raise ValueError(
                "branch_checkpoint: 'best' is not supported with branch_parallel: each group would need its own "
                "validation reduce"
            )
        steps = self.branch_eval_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps < self.fork_interval:
            raise ValueError(
                f"branch_eval_steps: with branch_checkpoint='best', a whole number of steps >= 1 and below fork_interval "
                f"({self.fork_interval}), got {steps!r}"
            )

    def _validate_branches(self) -> None:
        if not isinstance(self.branches, list) or not self.branches:
            raise ValueError(f"branches: must be a non-empty list of {{task: weight}} mappings, got {self.branches!r}")
        for index, weights in enumerate(self.branches):
            if not isinstance(weights, dict) or not weights:
                raise ValueError(f"branches[{index}]: must be a non-empty {{task: weight}} mapping, got {weights!r}")
            for task, weight in weights.items():
                if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                    raise ValueError(f"branches[{index}][{task!r}]: weight must be a number >= 0, got {weight!r}")
            if sum(weights.values()) <= 0:
                raise ValueError(f"branches[{index}]: at least one task needs a positive weight")

    @property
    def num_branches(self) -> int:
        if self.method != "forkmerge":
            return 1
        if self.branches is not None:
            return len(self.branches)
        if self.topk is not None:
            return len(self.topk)
        return 2
