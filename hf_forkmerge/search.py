"""Choosing merge weights: the reference code's greedy search, behind a `score(weights) -> float` callback."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

DEFAULT_GRID = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class Candidate:
    weights: list[float]
    score: float


@dataclass
class SearchResult:
    weights: list[float]
    score: float
    candidates: list[Candidate] = field(default_factory=list)


def greedy_search(
    branch_scores: Sequence[float],
    score: Callable[[list[float]], float],
    grid: Sequence[float] = DEFAULT_GRID,
    greater_is_better: bool = False,
) -> SearchResult:
    """Greedy search over branches, linear in their number, as the ForkMerge authors do it.

    Branches are taken best first (by `branch_scores`, each branch scored alone). The best starts with weight 1.
    Each next branch is tried at `alpha * bound` for every alpha in `grid`, where `bound` is the mean weight of
    the branches already in; the weights are normalised to sum to 1 and scored. The best alpha is kept, 0 if
    no candidate beats the current best. Unlike the reference code, the running best starts from the best
    branch's own score (not from 0), so any metric works, in either direction.
    """
    if not branch_scores:
        raise ValueError("greedy_search needs at least one branch")
    order = sorted(range(len(branch_scores)), key=lambda i: branch_scores[i], reverse=greater_is_better)
    weights = [0.0] * len(branch_scores)
    weights[order[0]] = 1.0
    best = branch_scores[order[0]]
    candidates = [Candidate(list(_one_hot(len(weights), i)), branch_scores[i]) for i in range(len(weights))]
    for position, branch in enumerate(order[1:], start=1):
        bound = sum(weights[i] for i in order[:position]) / position
        best_weights = weights
        for alpha in grid:
            if alpha == 0:
                continue
            trial = list(weights)
            trial[branch] = alpha * bound
            trial = _normalised(trial)
            trial_score = score(trial)
            candidates.append(Candidate(trial, trial_score))
            if improves(trial_score, best, greater_is_better):
                best, best_weights = trial_score, trial
        weights = best_weights
    return SearchResult(weights=weights, score=best, candidates=candidates)


def improves(score: float, best: float, greater_is_better: bool) -> bool:
    """Whether `score` is strictly better than `best` (a NaN score never is)."""
    return score > best if greater_is_better else score < best


def _one_hot(size: int, index: int) -> list[float]:
    return [1.0 if i == index else 0.0 for i in range(size)]


def _normalised(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]
