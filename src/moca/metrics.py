"""Continual-learning metrics on a score matrix, and adaptation speed on a score curve.

Scores are "higher is better" (in moca: oracle cost / policy cost, 1.0 = optimal). The
score matrix ``R`` is ``[N, N]``: ``R[i][j]`` is the score on task j after learning tasks
0..i. ``initial[j]`` (optional) is the score on task j of the model before any learning,
needed for forward transfer.

Definitions (0-based; N tasks):

- average final score: ``mean_j R[N-1][j]``.
- backward transfer (GEM, Lopez-Paz & Ranzato 2017): ``bwt = mean_{j<N-1} (R[N-1][j] − R[j][j])``;
  negative = forgetting. The last task is left out (its term is 0 by construction).
- forward transfer (GEM): ``fwt = mean_{j>0} (R[j-1][j] − initial[j])``: how much learning
  the earlier tasks helped on task j before it was learned. GEM's ``initial`` is the
  randomly initialised model; pass the same random-init scores to every method to compare
  methods (with a meta-init's own scores, fwt measures transfer beyond the meta-init).
- forgetting (Chaudhry et al. 2018, "Riemannian Walk"): for ``j < N-1``,
  ``f_j = max_{l<N-1} R[l][j] − R[N-1][j]`` (rows before task j was learned are included,
  as in that paper); reported per task and as the mean.
- the seed's figure: the relative drop on the first task after learning the second,
  ``(R[0][0] − R[1][0]) / R[0][0]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np


class MetricsError(ValueError):
    """A score matrix or curve that the metrics cannot be computed on; the message says why."""


@dataclass(frozen=True)
class ContinualMetrics:
    """Summary of a score matrix (see the module docstring for definitions)."""

    average_final: float
    bwt: float | None  # None with one task
    fwt: float | None  # None with one task or without initial scores
    forgetting: list[float]  # f_j for j < N-1
    mean_forgetting: float | None  # None with one task
    drop_first_after_second: float | None  # None with one task

    def to_dict(self) -> dict:
        return asdict(self)


def _matrix(R: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    try:
        matrix = np.asarray(R, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MetricsError(f"R: not a numeric matrix ({err})") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise MetricsError(f"R: expected a square [N, N] matrix with N >= 1, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise MetricsError("R: contains non-finite scores")
    return matrix


def continual_metrics(
    R: Sequence[Sequence[float]] | np.ndarray, initial: Sequence[float] | np.ndarray | None = None
) -> ContinualMetrics:
    """Average final score, bwt, fwt, forgetting and the seed's drop figure of ``R``."""
    matrix = _matrix(R)
    n = matrix.shape[0]
    final = matrix[n - 1]
    base = None
    if initial is not None:
        base = np.asarray(initial, dtype=np.float64)
        if base.shape != (n,) or not np.isfinite(base).all():
            raise MetricsError(f"initial: expected {n} finite scores, got shape {base.shape}")
    if n == 1:
        return ContinualMetrics(float(final.mean()), None, None, [], None, None)
    earlier = range(n - 1)
    bwt = float(np.mean([final[j] - matrix[j, j] for j in earlier]))
    fwt = None if base is None else float(np.mean([matrix[j - 1, j] - base[j] for j in range(1, n)]))
    forgetting = [float(matrix[: n - 1, j].max() - final[j]) for j in earlier]
    if matrix[0, 0] <= 0:
        raise MetricsError(f"R[0][0]={matrix[0, 0]}: the relative drop needs a positive score on the first task")
    drop = float((matrix[0, 0] - matrix[1, 0]) / matrix[0, 0])
    return ContinualMetrics(
        average_final=float(final.mean()),
        bwt=bwt,
        fwt=fwt,
        forgetting=forgetting,
        mean_forgetting=float(np.mean(forgetting)),
        drop_first_after_second=drop,
    )


@dataclass(frozen=True)
class AdaptationSpeed:
    """When a score curve first reached ``fraction`` of its plateau."""

    steps: int  # gradient steps taken when first reached (0 = already at the start)
    seconds: float  # wall seconds of learning at that point
    plateau: float
    threshold: float  # fraction * plateau


def adaptation_speed(
    scores: Sequence[float],
    seconds: Sequence[float] | None = None,
    at_steps: Sequence[int] | None = None,
    fraction: float = 0.99,
    plateau: Literal["max", "tail"] = "max",
    tail: int = 3,
) -> AdaptationSpeed:
    """Steps (and seconds) until the score curve first reaches ``fraction·plateau``.

    ``scores[k]`` is the score after ``at_steps[k]`` gradient steps (default ``k``: a score
    after every step, starting before the first; pass ``at_steps`` when validating every
    few steps).

    ``plateau="max"``: the best score on the curve (then the threshold is always reached;
    a curve still rising at its end understates the steps, so give it enough steps).
    ``plateau="tail"``: the mean of the last ``tail`` points (robust to one lucky spike).
    ``seconds[k]`` is the wall time at the same point (``LearnStats.seconds``); without it,
    ``seconds`` in the result is NaN. Scores must be positive at the plateau (moca's
    oracle/policy ratios are), else "99% of the plateau" has no meaning.
    """
    curve = np.asarray(scores, dtype=np.float64)
    if curve.ndim != 1 or curve.size == 0 or not np.isfinite(curve).all():
        raise MetricsError(f"scores: expected a non-empty list of finite scores, got shape {curve.shape}")
    if not 0 < fraction <= 1:
        raise MetricsError(f"fraction={fraction!r}: must be in (0, 1]")
    if seconds is not None and len(seconds) != curve.size:
        raise MetricsError(f"seconds: {len(seconds)} entries for {curve.size} scores")
    if at_steps is not None and (len(at_steps) != curve.size or any(b <= a for a, b in zip(at_steps, at_steps[1:]))):
        raise MetricsError(f"at_steps: need {curve.size} increasing step numbers, got {list(at_steps)!r}")
    if plateau == "max":
        top = float(curve.max())
    elif plateau == "tail":
        if not 1 <= tail <= curve.size:
            raise MetricsError(f"tail={tail!r}: must be in [1, {curve.size}]")
        top = float(curve[-tail:].mean())
    else:
        raise MetricsError(f"plateau={plateau!r}: must be 'max' or 'tail'")
    if top <= 0:
        raise MetricsError(f"scores: plateau {top} is not positive; 99% of it has no meaning")
    threshold = fraction * top
    # The tail mean never exceeds the max, so some point always reaches the threshold.
    k = int(np.flatnonzero(curve >= threshold)[0])
    return AdaptationSpeed(
        steps=int(at_steps[k]) if at_steps is not None else k,
        seconds=float(seconds[k]) if seconds is not None else math.nan,
        plateau=top,
        threshold=threshold,
    )
