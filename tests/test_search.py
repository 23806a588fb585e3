import pytest

from hf_forkmerge.search import greedy_search


def quadratic(best):
    return lambda weights: sum((w - b) ** 2 for w, b in zip(weights, best))


def test_two_branches_find_the_known_best_mixture():
    # With two branches the second is tried at alpha in the grid against weight 1: alpha=0.6 gives [1/1.6, 0.6/1.6].
    best = [1 / 1.6, 0.6 / 1.6]
    score = quadratic(best)
    result = greedy_search([score([1, 0]), score([0, 1])], score)
    assert result.weights == pytest.approx(best)
    assert result.score == pytest.approx(0.0)
    assert len(result.candidates) == 2 + 5  # each branch alone, then five non-zero alphas


def test_branches_are_taken_best_first():
    # Branch 1 alone is best, so it starts with weight 1 and branch 0 is added on top of it.
    best = [0.2 / 1.2, 1 / 1.2]
    score = quadratic(best)
    result = greedy_search([score([1, 0]), score([0, 1])], score)
    assert result.weights == pytest.approx(best)


def test_three_branches_greedy():
    # After branches 0 and 1 ([0.5, 0.5]), branch 2 is tried at alpha * mean weight (0.5): alpha=1 gives thirds.
    best = [1 / 3, 1 / 3, 1 / 3]
    score = quadratic(best)
    result = greedy_search([score([1, 0, 0]), score([0, 1, 0]), score([0, 0, 1])], score)
    assert result.weights == pytest.approx(best)


def test_no_improvement_keeps_the_best_branch_alone():
    result = greedy_search([0.5, 0.9], lambda weights: 1.0)
    assert result.weights == [1.0, 0.0]
    assert result.score == 0.5


@pytest.mark.parametrize("offset", [0.0, -10.0])
def test_greater_is_better_works_for_metrics_at_or_below_zero(offset):
    # The reference code starts its search from a best score of 0 and so breaks on scores <= 0.
    best = [1 / 1.4, 0.4 / 1.4]
    score = lambda weights: offset - quadratic(best)(weights)  # noqa: E731
    result = greedy_search([score([1, 0]), score([0, 1])], score, greater_is_better=True)
    assert result.weights == pytest.approx(best)
    assert result.score == pytest.approx(offset)


def test_custom_grid():
    score = quadratic([0.5, 0.5])
    result = greedy_search([score([1, 0]), score([0, 1])], score, grid=[0.0, 1.0])
    assert result.weights == pytest.approx([0.5, 0.5])
    assert len(result.candidates) == 3
