"""Guided IG (Kapishnikov et al., CVPR 2021): an adaptive path from the baseline to the image.

At each of ``steps`` steps, the features with the smallest |gradient| (``fraction`` of them)
move toward the image first, while no feature strays more than ``max_dist`` (as a fraction of
the straight-line path) from the straight line; the attribution is the sum over steps of
(move) * gradient at the step's start. The step logic follows the authors' reference
implementation (PAIR saliency ``guided_ig.py``). Each step needs the previous step's gradient,
so ``run`` advances every (image, target) of a batch one step per packed engine call.
"""

from __future__ import annotations

import math

import numpy as np

EPSILON = 1e-9
MAX_DIST = 0.02  # PAIR's default: how far the path may leave the straight line


class GuidedPath:
    """The state of one Guided IG path: the current point, its attribution so far."""

    def __init__(self, image, baseline, steps: int, fraction: float, max_dist: float = MAX_DIST):
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        self.x_input = np.asarray(image, np.float64)
        self.x_baseline = np.asarray(baseline, np.float64)
        self.x = self.x_baseline.copy()
        self.steps, self.fraction, self.max_dist = int(steps), float(fraction), float(max_dist)
        self.l1_total = np.abs(self.x_input - self.x_baseline).sum()
        self.attributions = np.zeros_like(self.x_input)
        self.step = 0 if self.l1_total > 0 else self.steps  # nothing to move: done at once

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    def advance(self, grad_actual: np.ndarray) -> None:
        """One step, given the gradient at the current point."""
        grad_actual = np.asarray(grad_actual, np.float64)
        grad = grad_actual.copy()
        x, x_input, x_baseline = self.x, self.x_input, self.x_baseline
        alpha = (self.step + 1.0) / self.steps
        alpha_min, alpha_max = max(alpha - self.max_dist, 0.0), min(alpha + self.max_dist, 1.0)
        x_min = x_baseline + (x_input - x_baseline) * alpha_min
        x_max = x_baseline + (x_input - x_baseline) * alpha_max
        l1_target = self.l1_total * (1 - (self.step + 1) / self.steps)
        gamma = np.inf
        while gamma > 1.0:
            x_old = x.copy()
            with np.errstate(divide="ignore", invalid="ignore"):
                x_alpha = np.where(
                    x_input - x_baseline != 0, (x - x_baseline) / (x_input - x_baseline), np.nan
                )
            x_alpha[np.isnan(x_alpha)] = alpha_max
            behind = x_alpha < alpha_min
            x[behind] = x_min[behind]
            l1_current = np.abs(x - x_input).sum()
            if math.isclose(l1_target, l1_current, rel_tol=EPSILON, abs_tol=EPSILON):
                self.attributions += (x - x_old) * grad_actual
                break
            grad[x == x_max] = np.inf
            threshold = np.quantile(np.abs(grad), self.fraction, method="lower")
            selected = (np.abs(grad) <= threshold) & (grad != np.inf)
            l1_selected = (np.abs(x - x_max) * selected).sum()
            gamma = (l1_current - l1_target) / l1_selected if l1_selected > 0 else np.inf
            if gamma > 1.0:
                x[selected] = x_max[selected]
            else:
                x[selected] = (x + (x_max - x) * gamma)[selected]
            self.attributions += (x - x_old) * grad_actual
        self.step += 1


def run(engine, paths: list[GuidedPath], targets: list[int]) -> list[list[float]]:
    """Advance every path to its end, one step of all of them per packed call; returns
    each path's scores along the way (at the start of every step)."""
    scores = [[] for _ in paths]
    while True:
        active = [i for i, p in enumerate(paths) if not p.done]
        if not active:
            return scores
        values, grads = engine.gradients(
            np.stack([paths[i].x for i in active]), [targets[i] for i in active]
        )
        for i, value, grad in zip(active, values, grads):
            scores[i].append(float(value))
            paths[i].advance(grad)
