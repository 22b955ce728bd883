"""Settings of `routoo eval`, apart from harness.py so the CLI can show defaults without loading torch
and scikit-learn (which cost ~13 s of start-up for every `routoo` command)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalConfig:
    lambdas: int = 240                      # tradeoff sweep points per router (quantiles of its breakpoints)
    taus: int = 121                         # quality_target sweep points per router
    knn_ks: tuple[int, ...] = (5, 10, 20, 50, 100, 200, 400)
    knn_holdout: float = 0.15               # share of train that picks k (by frontier AUC), never the test
    budget_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)   # RouteBatch budgets, x best's cost
    random_mix_points: int = 21             # strong-model shares 0, 0.05, ..., 1 for random mixing
    min_reference_coverage: float = 0.99    # see evals/references.py
    # "Open-weights pool" = the pool without these API-only families (GPT-4o and Gemini).
    closed_model_prefixes: tuple[str, ...] = ("gpt-", "gemini-")
    ref_model: str | None = "Mixtral-8x7B-Instruct-v0.1"   # Routoo's headline comparison
    tfidf: bool = True                      # the slowest baseline (~1-2 min on 2 cores); off in quick runs
    # Paired bootstrap over test prompts (decisions fixed, outcomes resampled): 95% intervals of each AUC
    # and of Routoo's AUC minus each other router's. On mmlu-pro/dev one interval spans ~+-0.004.
    bootstrap: int = 300
    seed: int = 0
