"""Operating points of a router: the selector's own policies (selector/policies.py, called, not copied) turn
its predictions into one model per prompt, and sweeping a policy's parameter (lambda, tau) gives (realised
total cost, realised accuracy) points on the test labels.

Cells with an unknown label (NaN quality or cost) cannot be realised: the model is ineligible for that
prompt, for every router alike (the selector's `eligible` mask)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from evals.routers import RouterPredictions
from selector.policies import make_policy
from training.metrics import json_floats


def eligible_cells(quality: np.ndarray, cost_usd: np.ndarray) -> np.ndarray:
    """(n_prompts, n_models): True where both the label and the realised cost are known."""
    return ~np.isnan(quality) & ~np.isnan(cost_usd)


def tradeoff_breakpoints(quality: np.ndarray, expected_cost_usd: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Every lambda at which some prompt's tradeoff decision changes (walks each row's upper envelope)."""
    q = np.where(eligible, quality, -np.inf).astype(np.float64)
    c = np.where(eligible, expected_cost_usd, np.inf).astype(np.float64)
    rows = np.arange(len(q))
    cur = np.lexsort((c, -q), axis=-1)[:, 0]                               # best, cheapest of ties
    active = np.ones(len(q), dtype=bool)
    found = []
    for _ in range(q.shape[1]):
        if not active.any():
            break
        dq = q[rows, cur][:, None] - q
        dc = c[rows, cur][:, None] - c
        cheaper = eligible & (dc > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(cheaper, dq / np.where(cheaper, dc, 1.0), np.inf)
        nxt = ratio.argmin(axis=1)
        lam = ratio[rows, nxt]
        active &= np.isfinite(lam)
        found.append(lam[active])
        cur = np.where(active, nxt, cur)
    found = np.concatenate(found) if found else np.zeros(0)
    return np.maximum(found[np.isfinite(found)], 0.0)


def tradeoff_lambdas(quality: np.ndarray, expected_cost_usd: np.ndarray, eligible: np.ndarray,
                     n: int) -> np.ndarray:
    """0, quantiles of the breakpoints (so each step moves about as many decisions), and one lambda past
    the last breakpoint, where every prompt gets its cheapest model."""
    breaks = tradeoff_breakpoints(quality, expected_cost_usd, eligible)
    if breaks.size == 0:
        return np.array([0.0])
    inner = np.quantile(breaks, (np.arange(n - 2) + 0.5) / (n - 2))
    return np.unique(np.concatenate([[0.0], inner, [breaks.max() * 2 + 1e-9]]))


def quality_targets(quality: np.ndarray, eligible: np.ndarray, n: int) -> np.ndarray:
    inner = np.quantile(quality[eligible], (np.arange(n - 2) + 0.5) / (n - 2))
    return np.unique(np.clip(np.concatenate([[0.0], inner, [1.0]]), 0.0, 1.0))


@dataclass
class Frontier:
    """Operating points of one router under one policy, realised on the test data."""

    router: str
    policy: str
    parameters: np.ndarray    # (k,) lambda or tau
    cost_usd: np.ndarray      # (k,) realised total cost
    accuracy: np.ndarray      # (k,) realised mean quality
    note: str = ""
    choices: np.ndarray | None = None   # (k, n_prompts) model chosen at each point, for the bootstrap

    def to_json(self, ref_cost_usd: float) -> dict:
        return {"router": self.router, "policy": self.policy, "note": self.note,
                "parameters": json_floats(self.parameters), "cost_usd": json_floats(self.cost_usd),
                "normalised_cost": json_floats(self.cost_usd / ref_cost_usd), "accuracy": json_floats(self.accuracy)}


def realise(choice: np.ndarray, quality: np.ndarray, cost_usd: np.ndarray) -> tuple[float, float]:
    """(accuracy, total cost) of one model per prompt, from the test labels."""
    rows = np.arange(len(choice))
    return float(np.mean(quality[rows, choice])), float(math.fsum(cost_usd[rows, choice]))


def sweep(router: RouterPredictions, policy: str, parameters: np.ndarray, eligible: np.ndarray,
          quality: np.ndarray, cost_usd: np.ndarray, *, show_progress: bool = False) -> Frontier:
    accs, costs, choices = [], [], []
    for value in tqdm(parameters, desc=f"{policy} sweep: {router.name}", unit="pt", leave=False,
                      disable=not show_progress):
        choice = make_policy(policy, float(value)).choose(router.quality, router.expected_cost_usd, eligible)
        acc, cost = realise(choice, quality, cost_usd)
        accs.append(acc)
        costs.append(cost)
        choices.append(choice.astype(np.int16))
    return Frontier(router.name, policy, np.asarray(parameters, float), np.array(costs), np.array(accs),
                    choices=np.stack(choices))
