"""Continual-learning metrics from the score matrix R, where R[i][j] is the score on task j after training stage i
(stages and tasks in sequence order, T of each) and ``base[j]`` the base model's zero-shot score.

    AP         = (1/T) Σ_j R[T-1][j]                                   average performance after the last stage
    BWT        = 1/(T-1) Σ_{i<T-1} (R[T-1][i] − R[i][i])               backward transfer (< 0: forgetting)
    FWT        = 1/(T-1) Σ_{i>0} (R[i-1][i] − base[i])                 forward transfer (before training task i)
    Forgetting = 1/(T-1) Σ_{i<T-1} (max_{i≤l<T-1} R[l][i] − R[T-1][i])  drop from each task's best earlier score
"""
from __future__ import annotations


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def continual_metrics(R: list[list[float]], base: list[float]) -> dict[str, float | None]:
    T = len(R)
    last = R[T - 1]
    return dict(
        AP=_mean(last),
        BWT=_mean([last[i] - R[i][i] for i in range(T - 1)]),
        FWT=_mean([R[i - 1][i] - base[i] for i in range(1, T)]),
        forgetting=_mean([max(R[l][i] for l in range(i, T - 1)) - last[i] for i in range(T - 1)]),
    )
