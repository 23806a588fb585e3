"""ForkMergeTrainer: fork the model into branches, train each, search merge weights on the target, merge."""

import contextlib
import copy
import dataclasses
import inspect
import json
import math
import os
import warnings
from collections import defaultdict

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .baselines import GRADIENT_METHODS, make_rule
from .branches import FullWeightBranches, LoraBranches
from .config import ForkMergeConfig
from .checkpoint import complete_checkpoint, indexed_state, load_state, read_metadata, save_state
from .files import check_output_dir, write_text_atomic
from .modeling import MultiTaskModel
from .parallel import BranchGroups, data_parallel_over
from .search import Candidate, SearchResult, greedy_search, improves
from .tasks import (
    TASK_COLUMN,
    Branch,
    BranchSchedule,
    TaskCollator,
    as_task_dataset,
    fork_rounds,
    resolve_branches,
    segment_at,
)

HISTORY_FILE = "forkmerge_history.json"


class ForkMergeTrainer(Trainer):
    """A `Trainer` for auxiliary-task learning with ForkMerge (Jiang et al., NeurIPS 2023).

    `train_dataset` maps task names to datasets; `eval_dataset` maps task names to validation sets and must hold the
    target task. The model is called as `model(task=name, labels=..., **inputs)` and returns a loss, like
    [`MultiTaskModel`] does. Each fork round, every branch trains `fork_interval` steps from the merged weights with
    its own task weights, optimizer state and scheduler; then the greedy search picks the branch weights that score
    best on the target validation set, and every branch continues from that merge.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(
        self,
        model: torch.nn.Module,
        args: ForkMergeConfig,
        train_dataset: dict[str, Dataset],
        eval_dataset: dict[str, Dataset],
        data_collator=None,
        peft_config=None,
        **kwargs,
    ):
        if not isinstance(args, ForkMergeConfig):
            raise TypeError(f"args: expected a ForkMergeConfig, got {type(args).__name__}")
        if not isinstance(train_dataset, dict) or not train_dataset:
            raise TypeError("train_dataset: expected a non-empty {task name: datasets.Dataset} mapping")
        if not isinstance(eval_dataset, dict):
            raise TypeError("eval_dataset: expected a {task name: datasets.Dataset} mapping holding the target task")
        target = args.target_task
        if target not in train_dataset:
            raise ValueError(f"target_task: {target!r} is not a task of train_dataset ({', '.join(train_dataset)})")
        if target not in eval_dataset:
            raise ValueError(f"eval_dataset: holds no validation set for the target task {target!r}")
        self.tasks = [target, *[task for task in train_dataset if task != target]]
        model = _prepare_branch_model(model, args, peft_config)
        if args.should_save:  # before the Trainer creates output_dir, so that its error is ours
            check_output_dir(args.output_dir, _bytes_to_save(model, args))
        input_names = _input_names(model)
        train_dataset = {t: as_task_dataset(t, train_dataset[t], input_names, "train_dataset") for t in self.tasks}
        eval_dataset = {t: as_task_dataset(t, ds, input_names, "eval_dataset") for t, ds in eval_dataset.items()}
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=data_collator,
            **kwargs,
        )
        if (self.is_fsdp_enabled or self.is_deepspeed_enabled) and args.method not in ("stl", "ew"):
            raise ValueError(
                f"method: {args.method!r} with FSDP or DeepSpeed is not supported yet: branch snapshots, merges and "
                "per-branch optimizer states are written for whole (unsharded) tensors. Use DDP (with branch_type='lora' "
                "to keep each branch small), or method 'stl' / 'ew'"
            )
        self.task_collator = TaskCollator(self.data_collator)
        self.groups = None  # with branch_parallel: which branch this process trains, and with whom
        if args.branch_parallel:
            self.groups = BranchGroups(args.num_branches, args.world_size, args.process_index)
            self.branch_process_group = self.groups.new_process_group()

        self.steps_per_branch = self._steps_per_branch()
        if args.method == "forkmerge" and args.fork_interval > self.steps_per_branch:
            raise ValueError(
                f"fork_interval: {args.fork_interval} steps is longer than the run ({self.steps_per_branch} steps per "
                "branch): no merge would ever happen"
            )
        if args.topk is not None and max(args.topk) > len(self.tasks) - 1:
            raise ValueError(f"topk: asks for {max(args.topk)} auxiliaries but there are {len(self.tasks) - 1}")
        self.branches = None if args.topk is not None else resolve_branches(args, self.tasks)
        self.merge_history: list[dict] = []
        self.active = self.groups.branch if self.groups else 0  # index of the branch in training here
        self.gradient_rule = make_rule(args.method, self.tasks).to(args.device) if args.method in GRADIENT_METHODS else None
        self._metrics = defaultdict(list)
        self.add_callback(_ForkMergeLoop(self))

    # ---- the algorithm -------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        self._resume_from = None
        if resume_from_checkpoint:
            self._resume_from = complete_checkpoint(self.args.output_dir, resume_from_checkpoint)
            self._restore_run(read_metadata(self._resume_from))
        elif self.branches is None:
            ranking = self._rank_auxiliaries()
            self.branches = resolve_branches(self.args, self.tasks, ranking)
        return super().train(resume_from_checkpoint=self._resume_from, trial=trial, **kwargs)

    def fork(self) -> None:
        """Every branch starts from the current weights and random state, with fresh optimizer state and the
        schedule's start."""
        store_class = LoraBranches if self.args.branch_type == "lora" else FullWeightBranches
        self.store = store_class(self.model, len(self.branches), offload=self.args.offload_inactive_branches)
        self._optimizer_states = [None] * len(self.branches)
        self._scheduler_states = [self.lr_scheduler.state_dict() for _ in self.branches]
        # Each branch draws its own random numbers (dropout): the target branch then takes STL's path exactly.
        self._rng_states = [_rng_state() for _ in self.branches]
        self.active = self.groups.branch if self.groups else 0
        self._best_in_stretch: _ScoredState | None = None  # with branch_checkpoint="best"
        self._kept_steps = [0] * len(self.branches)  # the step of each branch's state that enters the next merge

    def end_segment(self, segment, is_last: bool) -> bool:
        """Called when a branch finishes its stretch of a round; merges at the end of the round. True if it merged."""
        if self.groups:  # every branch trained this stretch at once: gather them and merge
            self.store.save(self.active)
            self.groups.exchange(self.store.slots)
            self.merge(segment.round)
            return True
        if self.args.branch_checkpoint == "best":
            self._roll_back_to_best(segment.branch)
        self._stash(segment.branch)
        merged = segment.branch == len(self.branches) - 1
        if merged:
            self.merge(segment.round)
        if not is_last:
            self._activate(0 if merged else segment.branch + 1)
        return merged

    def score_branch(self) -> None:
        """With branch_checkpoint="best": score the branch in training on the target's validation set and keep its
        weights if they are the best of its stretch so far."""
        score, best = self._score_live_model(), self._best_in_stretch
        if best is None or improves(score, best.score, self._greater_is_better):
            self._best_in_stretch = _ScoredState(score, self.state.global_step, self.store.snapshot())

    def _roll_back_to_best(self, branch: int) -> None:
        best, self._best_in_stretch = self._best_in_stretch, None
        self.store.load_state(best.weights)
        self._kept_steps[branch] = best.step

    def merge(self, round_index: int) -> None:
        """Search the branch weights on the target validation set, then every branch continues from the merge."""
        healthy = self._healthy_branches()
        result = self.search(healthy)
        report = self.store.load_merge(result.weights)
        self.store.fork_all()
        diverged = [branch for branch in range(len(self.branches)) if branch not in healthy]
        for branch in diverged:  # its moments are non-finite too: it restarts from the merge with fresh ones
            if self.groups is None:
                self._optimizer_states[branch] = None
            elif branch == self.active:
                _unwrap_optimizer(self.optimizer).state = defaultdict(dict)
        self._record_merge(round_index, result, report, [self.branches[b].name for b in diverged])

    def search(self, branches: list[int]) -> SearchResult:
        """The greedy search over these branches; the others get weight 0."""

        def all_weights(weights: list[float]) -> list[float]:
            full = [0.0] * len(self.branches)
            for branch, weight in zip(branches, weights):
                full[branch] = weight
            return full

        num_candidates = len(branches) + (len(branches) - 1) * sum(1 for a in self.args.merge_grid if a)
        with tqdm(total=num_candidates, desc="ForkMerge search", leave=False, disable=self.args.disable_tqdm) as bar:

            def score(weights: list[float]) -> float:
                self.store.load_merge(all_weights(weights))
                value = self._score_live_model()
                bar.update()
                return value

            branch_scores = []
            for branch in branches:
                self.store.load(branch)
                branch_scores.append(self._score_live_model())
                bar.update()
            result = greedy_search(branch_scores, score, self.args.merge_grid, self._greater_is_better)
        candidates = [Candidate(all_weights(c.weights), c.score) for c in result.candidates]
        return SearchResult(all_weights(result.weights), result.score, candidates)

    def _healthy_branches(self) -> list[int]:
        """The branches whose weights are all finite; a diverged branch is left out of the merge, with a warning."""
        healthy = [branch for branch in range(len(self.branches)) if self.store.is_finite(branch)]
        diverged = [self.branches[b].name for b in range(len(self.branches)) if b not in healthy]
        if not healthy:
            raise FloatingPointError(
                f"every branch ({', '.join(diverged)}) has non-finite weights at step {self.state.global_step}: "
                "lower the learning rate or set max_grad_norm"
            )
        if diverged:
            warnings.warn(
                f"ForkMerge: branch {', '.join(diverged)} has non-finite weights at step {self.state.global_step}; "
                "it is left out of this merge and restarts from it",
                RuntimeWarning,
                stacklevel=2,
            )
        return healthy

    # ---- branch switching ----------------------------------------------------------------------------------------

    def _stash(self, branch: int) -> None:
        self.store.save(branch)
        optimizer = _unwrap_optimizer(self.optimizer)
        self._optimizer_states[branch] = optimizer.state
        if self.args.offload_inactive_branches:
            _move_optimizer_state(optimizer.state, torch.device("cpu"))
        self._scheduler_states[branch] = self.lr_scheduler.state_dict()
        self._rng_states[branch] = _rng_state()

    def _activate(self, branch: int) -> None:
        self.store.load(branch)
        optimizer = _unwrap_optimizer(self.optimizer)
        state = self._optimizer_states[branch]
        optimizer.state = state if state is not None else defaultdict(dict)
        if self.args.offload_inactive_branches:
            _move_optimizer_state(optimizer.state, self.args.device)
        self.lr_scheduler.load_state_dict(self._scheduler_states[branch])
        _set_rng_state(self._rng_states[branch])
        for group, lr in zip(optimizer.param_groups, self.lr_scheduler.get_last_lr()):
            group["lr"] = lr
        self.active = branch

    # ---- scoring and history -------------------------------------------------------------------------------------

    @property
    def _greater_is_better(self) -> bool:
        return self.args.merge_criterion == "metric" and bool(self.args.greater_is_better)

    def _score_live_model(self) -> float:
        if self.args.merge_criterion == "loss":
            return self._target_loss()
        target, key = self.args.target_task, f"eval_{self.args.metric_for_best_model}"
        callbacks, self.callback_handler.callbacks = self.callback_handler.callbacks, []
        try:  # the search's evaluations are internal: no progress bars, logs or early stopping from them
            output = self.evaluation_loop(
                self.get_eval_dataloader(target), description="ForkMerge search", metric_key_prefix=f"eval_{target}"
            )
        finally:
            self.callback_handler.callbacks = callbacks
        if key not in output.metrics:
            raise KeyError(f"metric_for_best_model: the target evaluation gave no {key!r} (got {sorted(output.metrics)})")
        return float(output.metrics[key])

    def _target_loss(self) -> float:
        """The target validation loss, averaged over examples; every rank scores a disjoint shard and the sums are
        reduced, so all ranks get the same score, equal to a single process's (no padded duplicates counted)."""
        dataset = self.eval_dataset[self.args.target_task]
        if self.args.world_size > 1:
            dataset = dataset.shard(self.args.world_size, self.args.process_index, contiguous=True)
        loader = DataLoader(dataset, batch_size=self.args.eval_batch_size, collate_fn=self.task_collator)
        totals = torch.zeros(2, dtype=torch.float64, device=self.args.device)  # sum of losses, examples
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self.compute_loss_context_manager():
            for batch in loader:
                loss, examples = self.compute_loss(self.model, self._prepare_inputs(batch)), len(batch["labels"])
                totals += torch.stack([loss.double() * examples, totals.new_tensor(examples)])
        self.model.train(was_training)
        totals = self.accelerator.reduce(totals, "sum")
        return (totals[0] / totals[1]).item()

    def _record_merge(self, round_index: int, result: SearchResult, report: dict[str, float], diverged: list[str]) -> None:
        names = [branch.name for branch in self.branches]
        record = {
            "round": round_index,
            "step": self.state.global_step,
            "branches": names,
            "weights": result.weights,
            "score": result.score,
            "criterion": "loss" if self.args.merge_criterion == "loss" else self.args.metric_for_best_model,
            "candidates": [{"weights": c.weights, "score": c.score} for c in result.candidates],
            "diverged": diverged,
            **report,
        }
        if self.args.branch_checkpoint == "best":
            record["kept_steps"] = list(self._kept_steps)
        self.merge_history.append(record)
        self.state.log_history.append({"forkmerge_merge": record, "step": self.state.global_step})
        weights = {f"merge/weight/{name}": weight for name, weight in zip(names, result.weights)}
        self.log({"merge/score": result.score, **weights, **{f"merge/{k}": v for k, v in report.items()}})
        if self.args.should_save:
            self._write_history()

    def _write_history(self) -> None:
        model = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        specs = getattr(getattr(model, "config", None), "tasks", None) or {}
        encoder = getattr(getattr(model, "config", None), "encoder_config", None)
        history = {
            "target_task": self.args.target_task,
            "tasks": {task: specs.get(task, {}) for task in self.tasks},
            "base_model": getattr(encoder, "_name_or_path", None) or None,
            "branches": [dataclasses.asdict(b) for b in self.branches],
            "merges": self.merge_history,
        }
        if getattr(self, "auxiliary_ranking", None) is not None:
            history["auxiliary_ranking"] = self.auxiliary_ranking
        write_text_atomic(os.path.join(self.args.output_dir, HISTORY_FILE), json.dumps(history, indent=2))

    def _rank_auxiliaries(self) -> list[str]:
        """The reference code's pruning run: train target + each auxiliary alone briefly, rank by target score."""
        target, scores = self.args.target_task, {}
        for auxiliary in self.tasks[1:]:
            args = dataclasses.replace(
                self.args,
                branches=[{target: 1.0, auxiliary: 1.0}],
                topk=None,
                branch_parallel=False,
                max_steps=self.args.pruning_steps,
                fork_interval=self.args.pruning_steps,
                eval_strategy="no",
                save_strategy="no",
                load_best_model_at_end=False,
                report_to=[],
                push_to_hub=False,
                output_dir=os.path.join(self.args.output_dir, "ranking", auxiliary),
            )
            trial = ForkMergeTrainer(
                model=copy.deepcopy(self.model),
                args=args,
                train_dataset={t: self.train_dataset[t] for t in (target, auxiliary)},
                eval_dataset={target: self.eval_dataset[target]},
                data_collator=self.task_collator.collators,
                compute_metrics=self.compute_metrics,
            )
            trial.train()
            scores[auxiliary] = trial._score_live_model()
        ranking = sorted(scores, key=scores.get, reverse=self._greater_is_better)
        self.auxiliary_ranking = [{"task": task, "score": scores[task]} for task in ranking]
        self.state.log_history.append({"forkmerge_ranking": self.auxiliary_ranking})
        return ranking

    # ---- checkpoints ---------------------------------------------------------------------------------------------

    def save_branch_state(self, checkpoint_dir: str) -> None:
        """Complete a Trainer checkpoint with every branch's optimizer state and the merge history (called on every
        process: with branch_parallel the branches' states are gathered on the main one)."""
        states = self._branch_optimizer_states()
        if not self.args.should_save:
            return
        metadata = {
            "global_step": self.state.global_step,
            "branches": [dataclasses.asdict(b) for b in self.branches],
            "merges": self.merge_history,
            "auxiliary_ranking": getattr(self, "auxiliary_ranking", None),
        }
        rule = self.gradient_rule.state_dict() if self.gradient_rule is not None else {}
        extra = {f"rule.{name}": tensor for name, tensor in rule.items()}
        if self.groups is None and len(self.branches) > 1:  # with branch_parallel each process's own RNG is the branch's
            extra |= {f"rng.{b}.{device}": t for b, state in enumerate(self._rng_states) for device, t in state.items()}
        save_state(checkpoint_dir, states, metadata, extra)

    def _branch_optimizer_states(self) -> list[dict | None] | None:
        """Each branch's optimizer state as `optimizer.state_dict()["state"]`, on the main process (None: not
        started yet); [] for a single-branch baseline, whose state is the Trainer's own optimizer checkpoint."""
        optimizer = _unwrap_optimizer(self.optimizer)
        if self.groups:
            own = {index: {k: v.cpu() if torch.is_tensor(v) else v for k, v in entries.items()}
                   for index, entries in optimizer.state_dict()["state"].items()}
            return self.groups.gather_to_main(own)
        if len(self.branches) == 1:
            return []
        return [None if state is None else indexed_state(optimizer, state) for state in self._optimizer_states]

    def _restore_run(self, metadata: dict) -> None:
        saved = [Branch(**branch) for branch in metadata["branches"]]
        if self.branches is not None and saved != self.branches:
            raise ValueError(
                f"branches: the checkpoint was trained with branches {[b.weights for b in saved]}, not "
                f"{[b.weights for b in self.branches]}"
            )
        self.branches = saved
        self.merge_history = metadata["merges"]
        if metadata.get("auxiliary_ranking") is not None:
            self.auxiliary_ranking = metadata["auxiliary_ranking"]

    def _restore_branch_state(self) -> None:
        """After the Trainer loaded the model, live optimizer and scheduler: give every branch its own moments."""
        optimizer = _unwrap_optimizer(self.optimizer)
        states, extra = load_state(self._resume_from, optimizer)
        if len(self.branches) > 1:
            self._optimizer_states = states
            optimizer.state = states[self.active] if states[self.active] is not None else defaultdict(dict)
        for name, tensor in extra.items():
            if name.startswith("rng."):
                _, branch, device = name.split(".")
                self._rng_states[int(branch)][device] = tensor
        if self.gradient_rule is not None:
            rule = {name.removeprefix("rule."): tensor for name, tensor in extra.items() if name.startswith("rule.")}
            self.gradient_rule.load_state_dict(rule)

    def save_merged_model(self, output_dir: str | None = None) -> None:
        """Save a plain model with the LoRA adapter merged into the base weights (`merge_and_unload`)."""
        if not isinstance(self.model, PeftModel):
            raise ValueError("save_merged_model: the model has no adapter to merge; use save_model")
        output_dir = output_dir or os.path.join(self.args.output_dir, "merged")
        if self.args.should_save:
            copy.deepcopy(self.model).merge_and_unload().save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)

    # ---- Trainer hooks -------------------------------------------------------------------------------------------

    def _steps_per_branch(self) -> int:
        if self.args.max_steps > 0:
            return self.args.max_steps
        examples_per_step = self.args.per_device_train_batch_size * self._processes_per_branch()[1]
        steps_per_epoch = math.ceil(len(self.train_dataset[self.args.target_task]) / examples_per_step)
        steps_per_epoch = math.ceil(steps_per_epoch / self.args.gradient_accumulation_steps)
        return max(1, math.ceil(self.args.num_train_epochs * steps_per_epoch))

    def get_train_dataloader(self) -> DataLoader:
        interval = self.args.fork_interval if self.args.method == "forkmerge" else self.steps_per_branch
        trained_here = [self.groups.branch] if self.groups else range(len(self.branches))
        self.segments = fork_rounds(self.steps_per_branch, interval, trained_here)
        process_index, num_processes = self._processes_per_branch()
        schedule = BranchSchedule(
            datasets=self.train_dataset,
            collator=self.task_collator,
            branches=self.branches,
            segments=self.segments,
            batch_size=self.args.per_device_train_batch_size,
            gradient_accumulation_steps=self.args.gradient_accumulation_steps,
            weighting=self.args.task_weighting,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            process_index=process_index,
            num_processes=num_processes,
        )
        return self._schedule_loader(schedule)

    def _processes_per_branch(self) -> tuple[int, int]:
        """This process's index among the processes that share its branch's batches, and their number."""
        if self.groups:
            return self.groups.rank_in_group, self.groups.group_size
        return self.args.process_index, self.args.world_size

    def _wrap_model(self, model, training: bool = True, dataloader=None):
        # Branch-parallel: DDP over the branch's own group; accelerate would average gradients across all branches.
        if self.groups and training and self.accelerator.unwrap_model(model) is model:
            return data_parallel_over(model, self.branch_process_group, self.accelerator)
        return super()._wrap_model(model, training, dataloader)

    def get_resumed_dataloader(self, dataloader: DataLoader, num_batches: int) -> DataLoader:
        # Every micro-batch is a function of its index, so resuming starts the schedule at the right one.
        schedule = dataloader.dataset
        return self._schedule_loader(Subset(schedule, range(num_batches, len(schedule))))

    def _schedule_loader(self, schedule) -> DataLoader:
        # Not passed through accelerator.prepare: the schedule already gives each rank its share of every batch.
        return DataLoader(
            schedule,
            batch_size=None,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
        dataset = self.eval_dataset[eval_dataset] if isinstance(eval_dataset, str) else eval_dataset
        if not isinstance(dataset, Dataset) or TASK_COLUMN not in dataset.column_names:
            raise ValueError("eval_dataset: evaluate a {task name: Dataset} mapping, e.g. {'sst2': test_set}")
        loader = DataLoader(
            dataset,
            batch_size=self.args.eval_batch_size,
            collate_fn=self.task_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluate every task of `eval_dataset` ({task: Dataset}; default: the trainer's); metrics are named
        `{metric_key_prefix}_{task}_{metric}`."""
        if isinstance(eval_dataset, dict):
            for task in eval_dataset:
                if task not in self.tasks:
                    raise ValueError(f"eval_dataset: unknown task {task!r}; tasks are {', '.join(self.tasks)}")
            names = _input_names(self.model)
            eval_dataset = {t: as_task_dataset(t, ds, names, "eval_dataset") for t, ds in eval_dataset.items()}
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        """Predict one task: `test_dataset` is `{task name: Dataset}` with a single task."""
        if not isinstance(test_dataset, dict) or len(test_dataset) != 1:
            raise ValueError("test_dataset: predict one task at a time: {task name: Dataset}")
        ((task, dataset),) = test_dataset.items()
        if task not in self.tasks:
            raise ValueError(f"test_dataset: unknown task {task!r}; tasks are {', '.join(self.tasks)}")
        dataset = as_task_dataset(task, dataset, _input_names(self.model), "test_dataset")
        return super().predict(dataset, ignore_keys=ignore_keys, metric_key_prefix=f"{metric_key_prefix}_{task}")

    def get_test_dataloader(self, test_dataset: Dataset) -> DataLoader:
        return self.get_eval_dataloader(test_dataset)

    def set_initial_training_values(self, args, dataloader):
        # One pass over the schedule is the whole run: every branch's steps, round after round.
        steps = len(dataloader) // args.gradient_accumulation_steps
        total_batch_size = self.get_total_train_batch_size(args)
        return 1, steps, steps * total_batch_size, steps * total_batch_size, total_batch_size, len(dataloader), steps

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        # Each branch runs the schedule of one run of steps_per_branch steps.
        return super().create_scheduler(num_training_steps=self.steps_per_branch, optimizer=optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if TASK_COLUMN in inputs:  # one task's batch: evaluation and prediction
            outputs = model(**inputs)
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
            return (loss, outputs) if return_outputs else loss
        branch = self.branches[self.active]
        losses = self._task_losses(model, inputs)
        if self.args.task_weighting == "sampling":  # the weights chose the task; its loss counts once
            return sum(losses.values())
        return sum(branch.weights[task] * loss for task, loss in losses.items())

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.gradient_rule is None:
            return super().training_step(model, inputs, num_items_in_batch)
        # Gradient-coordination baselines combine per-task gradients themselves, in one process (no DDP, no fp16
        # loss scaling).
        model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            losses = self._task_losses(model, inputs)
        scale = 1.0 / self.current_gradient_accumulation_steps
        parameters = [p for p in model.parameters() if p.requires_grad]
        self.gradient_rule.backward(losses, parameters, self.args.target_task, scale)
        return sum(loss.detach() for loss in losses.values()) * scale

    def _task_losses(self, model, inputs: dict[str, dict]) -> dict[str, torch.Tensor]:
        """One forward per task of a training step; the losses are logged per branch and task."""
        with _tasks_in_one_call(self.accelerator.unwrap_model(model, keep_torch_compile=True)):
            losses = model(inputs)
        branch = self.branches[self.active]
        for task, loss in losses.items():
            self._metrics[f"{branch.name}/{task}_loss"].append(loss.detach())
        return losses

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        extra = list(self.gradient_rule.parameters()) if self.gradient_rule is not None else []
        groups = _unwrap_optimizer(optimizer).param_groups
        if extra and not any(extra[0] is p for group in groups for p in group["params"]):
            _unwrap_optimizer(optimizer).add_param_group({"params": extra, "weight_decay": 0.0})  # UW's log-variances
        return optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the per-task losses since the last one
            means = {key: torch.stack(values).mean().item() for key, values in self._metrics.items()}
            if self.groups:  # every process logs its own branch; the main process reports them all
                for branch_means in self.groups.gather_to_main(means) or []:
                    means |= branch_means
            logs.update(means)
            self._metrics.clear()
        super().log(logs, start_time)


class _ForkMergeLoop(TrainerCallback):
    """Drives the fork/train/merge rounds from the Trainer's public step hooks."""

    def __init__(self, trainer: ForkMergeTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.forking:
            self.trainer.fork()
        if self.trainer._resume_from:
            self.trainer._restore_branch_state()

    def on_save(self, args, state, control, **kwargs):
        if not args.save_only_model:
            self.trainer.save_branch_state(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))

    @property
    def forking(self) -> bool:
        return len(self.trainer.branches) > 1  # the STL and EW baselines train one branch and never merge

    def on_train_end(self, args, state, control, **kwargs):
        if args.should_save:  # baselines too: the card and the CLI read the branches from it
            self.trainer._write_history()

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        if not self.forking:
            return
        segment = segment_at(trainer.segments, state.global_step - 1)
        if args.branch_checkpoint == "best":
            into_stretch = state.global_step - segment.first_step
            if into_stretch % args.branch_eval_steps == 0 or state.global_step == segment.end_step:
                trainer.score_branch()
        if state.global_step != segment.end_step:
            return
        is_last = segment.end_step == trainer.segments[-1].end_step
        if trainer.end_segment(segment, is_last) and not is_last:
            # With ForkMerge an "epoch" of the eval/save strategies is one fork round; the last one ends the epoch.
            control.should_evaluate |= args.eval_strategy == "epoch"
            control.should_save |= args.save_strategy == "epoch"


@dataclasses.dataclass
class _ScoredState:
    score: float
    step: int  # the Trainer's global step at which the branch had these weights
    weights: dict[str, torch.Tensor]


def _prepare_branch_model(model: torch.nn.Module, args: ForkMergeConfig, peft_config):
    """The model whose trainable tensors make a branch: with `branch_type="lora"`, a LoRA PeftModel."""
    is_peft = isinstance(model, PeftModel)
    if args.branch_type == "full":
        if is_peft or peft_config is not None:
            raise ValueError(
                "branch_type: 'full' would average LoRA factors A and B separately, which is not the weighted sum "
                "of the branches' updates; use branch_type='lora' with a peft model or peft_config"
            )
        return model
    if not is_peft:
        if not isinstance(peft_config, LoraConfig):
            raise ValueError("branch_type: 'lora' needs peft_config=LoraConfig(...) or a PeftModel with a LoRA adapter")
        if getattr(peft_config, "use_dora", False):
            raise ValueError("peft_config: DoRA adapters are not supported: their magnitude vectors do not merge linearly")
        if isinstance(model, MultiTaskModel):
            # The task heads are new weights: they train, and the adapter must save them.
            heads = [f"heads.{task}" for task in model.heads if f"heads.{task}" not in (peft_config.modules_to_save or [])]
            peft_config = copy.copy(peft_config)
            peft_config.modules_to_save = [*(peft_config.modules_to_save or []), *heads]
        model = get_peft_model(model, peft_config)
    elif peft_config is not None:
        raise ValueError("peft_config: the model is already a PeftModel; pass one or the other")
    if not any(isinstance(config, LoraConfig) for config in model.peft_config.values()):
        raise ValueError("branch_type: 'lora' needs a LoRA adapter on the PeftModel")
    return model


def _bytes_to_save(model: torch.nn.Module, args: ForkMergeConfig) -> int:
    """About what the run writes: the model, and with checkpoints every branch's Adam moments."""
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if args.save_strategy == "no" or args.save_only_model:
        return model_bytes
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return model_bytes + 2 * trainable * args.num_branches


def _input_names(model: torch.nn.Module) -> set[str] | None:
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    if hasattr(model, "input_names"):
        return model.input_names()
    parameters = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return set(parameters)


@contextlib.contextmanager
def _tasks_in_one_call(module: torch.nn.Module):
    """Let one call `model({task: batch})` run the per-task forwards and return `{task: loss}`.

    DDP allows one forward per backward (it marks unused parameters after each forward), so the step's forwards
    must happen inside a single call of the wrapped model. The forward is swapped on the instance, as accelerate
    does for mixed precision, and restored afterwards.
    """
    per_task_forward = module.forward
    patched_before = "forward" in vars(module)

    def forward_tasks(batches: dict[str, dict]) -> dict[str, torch.Tensor]:
        losses = {}
        for task, batch in batches.items():
            outputs = per_task_forward(**batch)
            losses[task] = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        return losses

    module.forward = forward_tasks
    try:
        yield
    finally:
        if patched_before:
            module.forward = per_task_forward
        else:
            del module.forward


def _rng_state() -> dict[str, torch.Tensor]:
    """The generators a training step draws from (dropout): the CPU's and, on CUDA, the current device's."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one


def _move_optimizer_state(state: dict, device: torch.device) -> None:
    for values in state.values():
        for key, value in values.items():
            if torch.is_tensor(value) and key != "step":
                values[key] = value.to(device)
