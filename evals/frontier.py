"""Frontier math on operating points (normalised cost, accuracy), pure numpy.

- Frontier: the upper concave, non-decreasing hull of a router's operating points and the origin. Any two
  operating points can be mixed at random, so every point of the hull is reachable (RouterBench's AIQ).
  The no-prompt router's frontier is thus the best any fixed mix of models can do.
- AUC: area under the frontier over normalised cost in [0, 1], flat beyond the router's dearest point.
- Gap recovered (RouteLLM's APGR against the no-prompt router):
  (AUC - AUC_no_prompt) / (AUC_oracle - AUC_no_prompt).
- Reach / accuracy-at-cost figures use single operating points (one lambda, no mixing): the cheapest point
  whose accuracy reaches a reference's, and the best accuracy of a point that costs at most the reference.
"""

from __future__ import annotations

import numpy as np


def frontier_hull(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the upper concave, non-decreasing hull of the points and the origin, by increasing x."""
    pts = sorted(set(zip(np.asarray(x, float).tolist(), np.asarray(y, float).tolist())) | {(0.0, 0.0)})
    hull: list[tuple[float, float]] = []
    for p in pts:
        # Drop points that a later one dominates or that lie on or under the chord (upper hull, monotone chain).
        while hull and p[1] >= hull[-1][1] and p[0] == hull[-1][0]:
            hull.pop()
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        if hull and p[0] == hull[-1][0]:
            continue
        hull.append(p)
    hx, hy = np.array([h[0] for h in hull]), np.array([h[1] for h in hull])
    top = int(np.argmax(hy))            # past the most accurate vertex the frontier is flat
    return hx[:top + 1], hy[:top + 1]


def frontier_value(hx: np.ndarray, hy: np.ndarray, at: np.ndarray | float) -> np.ndarray:
    return np.interp(at, hx, hy, right=hy[-1])


def area_under_frontier(x: np.ndarray, y: np.ndarray, x_max: float = 1.0) -> float:
    """AUC of the hull over [0, x_max], divided by x_max (so a router at accuracy 1 everywhere scores 1)."""
    hx, hy = frontier_hull(x, y)
    grid_x = np.unique(np.concatenate([hx[hx < x_max], [x_max]]))
    grid_y = frontier_value(hx, hy, grid_x)
    grid_x, grid_y = np.concatenate([[0.0], grid_x]), np.concatenate([[0.0], grid_y])
    return float(np.trapz(grid_y, grid_x) / x_max)


def area_under_points(x: np.ndarray, y: np.ndarray, x_max: float = 1.0) -> float:
    """AUC without mixing: at each cost, the best accuracy of a single operating point that costs at most
    that (a staircase; 0 below the cheapest point), over [0, x_max], divided by x_max."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.maximum.accumulate(np.asarray(y, float)[order])
    edges = np.clip(np.append(xs, x_max), 0.0, x_max)
    return float(np.sum(ys * np.diff(edges)) / x_max)


def gap_recovered(auc: float, auc_no_prompt: float, auc_oracle: float) -> float:
    span = auc_oracle - auc_no_prompt
    return float((auc - auc_no_prompt) / span) if span > 0 else float("nan")


def cost_to_reach(cost: np.ndarray, accuracy: np.ndarray, target_accuracy: float) -> float | None:
    """Cheapest single operating point with accuracy >= target; None if none reaches it."""
    ok = accuracy >= target_accuracy - 1e-12
    return float(cost[ok].min()) if ok.any() else None


def accuracy_at_cost(cost: np.ndarray, accuracy: np.ndarray, budget: float) -> float | None:
    """Best accuracy of a single operating point costing at most budget; None if all cost more."""
    ok = cost <= budget * (1 + 1e-12)
    return float(accuracy[ok].max()) if ok.any() else None
