from itertools import combinations

import numpy as np
import pytest

from prompt_ft_assets.parsing import INVALID_LABEL
from prompt_ft_assets.voting import majority_vote, run_combinations, vote_sizes


def test_majority_vote_simple():
    predictions = np.array([[0, 1, 1], [0, 0, 1], [1, 0, 1]])
    assert majority_vote(predictions, 2).tolist() == [0, 0, 1]


def test_tie_goes_to_smallest_label():
    predictions = np.array([[1, 0, 2], [0, 1, 1]])
    assert majority_vote(predictions, 3).tolist() == [0, 0, 1]


def test_invalid_answers_cast_no_vote():
    predictions = np.array([[INVALID_LABEL, INVALID_LABEL], [1, INVALID_LABEL], [INVALID_LABEL, INVALID_LABEL]])
    assert majority_vote(predictions, 2).tolist() == [1, INVALID_LABEL]


def test_majority_vote_rejects_1d_input():
    with pytest.raises(ValueError, match="runs, examples"):
        majority_vote(np.array([0, 1]), 2)


def test_vote_sizes_exclude_1_and_n():
    assert vote_sizes(10) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert vote_sizes(3) == [2]
    assert vote_sizes(2) == []


def test_run_combinations_cover_every_subset():
    found = list(run_combinations([3, 1, 2, 0, 4], 3))
    assert found == list(combinations([0, 1, 2, 3, 4], 3))
    assert len(found) == 10
