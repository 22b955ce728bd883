"""Cost estimates from list prices, for a pool model whose per-prompt costs are unknown.

The canonical data's costs are ceil(characters / 4) input tokens x the input price plus the answer's tokens
x the output price (../shared/data/README.md). A model with prices but no known cost gets that estimate,
with as many output tokens as a prompt typically takes in this pool, and its cost row is then fitted like
any other. Without it the row would predict ~$0, and the router would pick that model at any price of cost.
A model whose costs are known to be 0 is free, not unknown, and keeps its ~$0.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

MIN_KNOWN_COSTS = 2      # fewer known costs than this and the model's cost row is fitted on the estimate


def input_tokens(texts: list[str]) -> np.ndarray:
    return np.array([-(-len(t) // 4) for t in texts], dtype=np.float64)


def typical_output_tokens(texts: list[str], cost_usd: np.ndarray, prices: list[list[float | None]]) -> float | None:
    """Median over the priced models with known costs of their mean output tokens a prompt, solved from
    cost = input tokens x input price + output tokens x output price; None if no model allows it."""
    tokens_in = input_tokens(texts)
    estimates = []
    for j, (price_in, price_out) in enumerate(prices):
        known = np.isfinite(cost_usd[:, j])
        if price_in is None or not price_out or known.sum() < MIN_KNOWN_COSTS:
            continue
        out = (cost_usd[known, j].mean() * 1e6 - tokens_in[known].mean() * price_in) / price_out
        if out > 0:
            estimates.append(out)
    return float(np.median(estimates)) if estimates else None


def barely_costed(cost_usd: np.ndarray) -> list[int]:
    """Columns of (n_prompts, n_models) costs with fewer than MIN_KNOWN_COSTS known cells."""
    return [j for j in range(cost_usd.shape[1]) if np.isfinite(cost_usd[:, j]).sum() < MIN_KNOWN_COSTS]


def fill_unknown_costs(texts: list[str], cost_usd: np.ndarray, prices: list[list[float | None]],
                       names: list[str], *, output_tokens: float | None = None) -> tuple[np.ndarray, list[str]]:
    """(costs with the unknown cells of barely-costed models estimated from prices, those models' names).
    `output_tokens` defaults to typical_output_tokens of the same matrix."""
    missing = barely_costed(cost_usd)
    if not missing:
        return cost_usd, []
    out = np.array(cost_usd, dtype=np.float64, copy=True)
    if output_tokens is None:
        output_tokens = typical_output_tokens(texts, cost_usd, prices)
    tokens_in = input_tokens(texts)
    for j in missing:
        price_in, price_out = prices[j]
        if price_in is None or price_out is None:
            raise ValueError(f"model {names[j]!r} has no known cost and no prices in models.json, so its expected "
                             f"cost cannot be predicted: give its costs in costs.csv or its prices")
        if output_tokens is None and price_out > 0:
            raise ValueError(f"model {names[j]!r} has no known cost, and no other model has both costs and "
                             f"prices to tell how many output tokens a prompt takes")
        estimate = (tokens_in * price_in + (output_tokens or 0.0) * price_out) / 1e6
        out[:, j] = np.where(np.isfinite(out[:, j]), out[:, j], estimate)
    log.warning("costs of %s estimated from their prices (%.0f output tokens a prompt)",
                [names[j] for j in missing], output_tokens or 0.0)
    return out, [names[j] for j in missing]
