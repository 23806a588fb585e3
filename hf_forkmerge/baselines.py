"""Gradient-coordination baselines: how one step turns the per-task losses into gradients.

STL and EW need no rule of their own: they are ForkMergeTrainer runs with one branch (the target alone; every task
with weight 1). The methods here train every task in one branch, like EW, and differ in how the task gradients
combine:

- GCS (Du et al., 2018, "Adapting Auxiliary Losses Using Gradient Similarity"): an auxiliary's gradient is dropped
  when its cosine with the target's gradient is negative. Written here: no maintained library ships it.
- PCGrad (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning"): each task gradient is projected off the
  others it conflicts with; the aggregation is torchjd's (`torchjd.aggregation.PCGrad`), applied to the matrix of
  per-task gradients (one backward per task: each task has its own batch, so torchjd's batched Jacobian, which
  backpropagates every row through every task's graph, would cost about one full backward per task more).
- UW (Kendall et al., 2018): losses weighted by learned uncertainties, sum_i 0.5 exp(-s_i) L_i + 0.5 s_i; from
  torchjd (`torchjd.scalarization.UW`). Its log-variances train with the model's optimizer.

Gradients are taken over all trainable parameters. Task heads get gradients from their own task only, so they do not
change the inner products between task gradients that GCS and PCGrad act on.
"""

from collections.abc import Sequence

import torch
from torch import nn

GRADIENT_METHODS = ("gcs", "pcgrad", "uw")


def gcs_combine(target: Sequence[torch.Tensor], auxiliaries: Sequence[Sequence[torch.Tensor]]):
    """The target gradient plus every auxiliary gradient whose cosine with it is >= 0, and which were kept.

    Each gradient is a list of tensors, one per parameter.
    """
    combined = [g.clone() for g in target]
    kept = []
    for auxiliary in auxiliaries:
        keep = _dot(target, auxiliary) >= 0
        kept.append(bool(keep))
        if keep:
            for total, g in zip(combined, auxiliary):
                total.add_(g)
    return combined, kept


class GradientRule(nn.Module):
    """Turns a step's per-task losses into gradients on `parameters` (accumulated into .grad)."""

    def backward(self, losses: dict[str, torch.Tensor], parameters: list[torch.Tensor], target: str, scale: float):
        raise NotImplementedError


class GCS(GradientRule):
    def __init__(self):
        super().__init__()
        self.kept_fraction: list[float] = []

    def backward(self, losses, parameters, target, scale):
        gradients = _task_gradients(losses, parameters, scale)
        auxiliaries = [gradients[task] for task in losses if task != target]
        combined, kept = gcs_combine(gradients[target], auxiliaries)
        self.kept_fraction.append(sum(kept) / max(len(kept), 1))
        _accumulate(parameters, combined)


class PCGradRule(GradientRule):
    def __init__(self):
        super().__init__()
        from torchjd.aggregation import PCGrad

        self.aggregator = PCGrad()

    def backward(self, losses, parameters, target, scale):
        gradients = _task_gradients(losses, parameters, scale)
        matrix = torch.stack([torch.cat([g.reshape(-1) for g in grads]) for grads in gradients.values()])
        combined = self.aggregator(matrix)
        sizes = [p.numel() for p in parameters]
        _accumulate(parameters, [g.view_as(p) for g, p in zip(combined.split(sizes), parameters)])


class UncertaintyWeighting(GradientRule):
    def __init__(self, tasks: Sequence[str]):
        super().__init__()
        from torchjd.scalarization import UW

        self.tasks = list(tasks)
        self.scalarizer = UW(len(self.tasks))

    def backward(self, losses, parameters, target, scale):
        values = torch.stack([losses[task] for task in self.tasks])
        (self.scalarizer(values.to(self.scalarizer.log_var.device)) * scale).backward()

    def task_weights(self) -> dict[str, float]:
        return {task: 0.5 * torch.exp(-s).item() for task, s in zip(self.tasks, self.scalarizer.log_var)}


def make_rule(method: str, tasks: Sequence[str]) -> GradientRule:
    if method == "gcs":
        return GCS()
    if method == "pcgrad":
        return PCGradRule()
    if method == "uw":
        return UncertaintyWeighting(tasks)
    raise ValueError(f"method: {method!r} is not a gradient-coordination method ({', '.join(GRADIENT_METHODS)})")


def _task_gradients(losses, parameters, scale) -> dict[str, list[torch.Tensor]]:
    """One backward per task through its own batch's graph; parameters a task does not reach get zeros."""
    gradients = {}
    for task, loss in losses.items():
        grads = torch.autograd.grad(loss * scale, parameters, retain_graph=True, allow_unused=True)
        gradients[task] = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, parameters)]
    return gradients


def _dot(a, b) -> float:
    # torch.dot allocates nothing per parameter; the per-parameter sums are added in float64.
    return sum(torch.dot(x.reshape(-1), y.reshape(-1)).double().item() for x, y in zip(a, b))


def _accumulate(parameters, gradients) -> None:
    for parameter, gradient in zip(parameters, gradients):
        if parameter.grad is None:
            parameter.grad = gradient.detach()
        else:
            parameter.grad.add_(gradient)
