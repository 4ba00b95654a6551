"""Continual-learning metrics on a hand-computed score matrix."""
import pytest

from cl_metrics import continual_metrics


def test_metrics_on_a_hand_computed_matrix():
    base = [0.1, 0.2, 0.0]
    R = [[0.8, 0.3, 0.1],   # after stage 0
         [0.6, 0.9, 0.2],   # after stage 1
         [0.5, 0.7, 0.9]]   # after stage 2
    m = continual_metrics(R, base)
    assert m["AP"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert m["BWT"] == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2)
    assert m["FWT"] == pytest.approx(((0.3 - 0.2) + (0.2 - 0.0)) / 2)
    assert m["forgetting"] == pytest.approx(((0.8 - 0.5) + (0.9 - 0.7)) / 2)


def test_single_task_has_no_transfer():
    m = continual_metrics([[0.4]], [0.1])
    assert m["AP"] == 0.4 and m["BWT"] is None and m["FWT"] is None and m["forgetting"] is None
