"""Continual-learning metrics on a hand-written score matrix, adaptation speed on hand-written curves."""

from __future__ import annotations

import math

import pytest

from moca.metrics import adaptation_speed, continual_metrics

# R[i][j]: score on task j after learning tasks 0..i (higher is better).
R = [
    [0.90, 0.50, 0.40],
    [0.70, 0.95, 0.60],
    [0.80, 0.75, 0.90],
]
INITIAL = [0.30, 0.35, 0.45]


def test_metrics_on_a_hand_written_matrix():
    m = continual_metrics(R, INITIAL)
    assert m.average_final == pytest.approx((0.80 + 0.75 + 0.90) / 3)
    # bwt = mean_{j<N-1} R[N-1][j] − R[j][j] = ((0.80 − 0.90) + (0.75 − 0.95)) / 2
    assert m.bwt == pytest.approx(-0.15)
    # fwt = mean_{j>0} R[j-1][j] − b_j = ((0.50 − 0.35) + (0.60 − 0.45)) / 2
    assert m.fwt == pytest.approx(0.15)
    # f_0 = max(0.90, 0.70) − 0.80; f_1 = max(0.50, 0.95) − 0.75
    assert m.forgetting == pytest.approx([0.10, 0.20])
    assert m.mean_forgetting == pytest.approx(0.15)
    # the seed's figure: (R[0][0] − R[1][0]) / R[0][0] = 0.2 / 0.9
    assert m.drop_first_after_second == pytest.approx(0.2 / 0.9)
    assert set(m.to_dict()) == {"average_final", "bwt", "fwt", "forgetting", "mean_forgetting", "drop_first_after_second"}


def test_forgetting_takes_the_best_earlier_row_not_the_diagonal():
    # Task 0 kept improving after it was learned (row 1), then dropped: f_0 counts from the best.
    m = continual_metrics([[0.6, 0.0, 0.0], [0.9, 0.8, 0.0], [0.5, 0.8, 0.7]])
    assert m.forgetting == pytest.approx([0.4, 0.0])
    assert m.bwt == pytest.approx(((0.5 - 0.6) + (0.8 - 0.8)) / 2)
    assert m.fwt is None  # no initial scores given


def test_single_task_has_only_the_final_score():
    m = continual_metrics([[0.9]], [0.2])
    assert m.average_final == 0.9
    assert m.bwt is None and m.fwt is None and m.mean_forgetting is None and m.drop_first_after_second is None
    assert m.forgetting == []


@pytest.mark.parametrize(
    "matrix, initial, match",
    [
        ([[0.9, 0.5]], None, "square"),
        ([], None, "square"),
        ([[0.9, float("nan")], [0.8, 0.7]], None, "non-finite"),
        ([[0.0, 0.5], [0.8, 0.7]], None, "positive"),
        ([[0.9, 0.5], [0.8, 0.7]], [0.1], "initial"),
        ([["a", "b"], ["c", "d"]], None, "numeric"),
    ],
)
def test_bad_matrices_are_refused(matrix, initial, match):
    with pytest.raises(ValueError, match=match):
        continual_metrics(matrix, initial)


CURVE = [0.50, 0.97, 0.985, 1.20, 0.99, 0.99, 0.99]  # one lucky spike at step 3
SECONDS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def test_adaptation_speed_max_plateau():
    speed = adaptation_speed(CURVE, SECONDS)  # plateau 1.2, threshold 1.188: the spike
    assert (speed.steps, speed.seconds, speed.plateau) == (3, 0.3, 1.2)
    assert speed.threshold == pytest.approx(1.188)


def test_adaptation_speed_tail_plateau_ignores_a_spike():
    speed = adaptation_speed(CURVE, SECONDS, plateau="tail", tail=3)  # plateau 0.99, threshold 0.9801
    assert (speed.steps, speed.seconds) == (2, 0.2)
    assert speed.plateau == pytest.approx(0.99)


def test_adaptation_speed_with_sparse_validation_and_no_times():
    speed = adaptation_speed([0.6, 0.9, 1.0, 1.0], at_steps=[0, 5, 10, 20])
    assert speed.steps == 10 and math.isnan(speed.seconds)
    assert adaptation_speed([0.995, 1.0]).steps == 0  # already within 99% before any step


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scores": []}, "scores"),
        ({"scores": [0.5, float("inf")]}, "scores"),
        ({"scores": [-1.0, -0.5]}, "plateau"),
        ({"scores": [0.5, 0.6], "seconds": [0.0]}, "seconds"),
        ({"scores": [0.5, 0.6], "at_steps": [3, 1]}, "at_steps"),
        ({"scores": [0.5, 0.6], "fraction": 1.5}, "fraction"),
        ({"scores": [0.5, 0.6], "plateau": "tail", "tail": 3}, "tail"),
        ({"scores": [0.5, 0.6], "plateau": "median"}, "plateau"),
    ],
)
def test_bad_curves_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        adaptation_speed(**kwargs)
