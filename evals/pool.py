"""One pool's evaluation: every router's frontiers under the selector's policies, random mixing, the
figures against the best single model and the reference, paired bootstrap intervals, and the RouteBatch
(budget) sweep."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evals.config import EvalConfig
from evals.frontier import (accuracy_at_cost, area_under_frontier, area_under_points, cost_to_reach,
                            gap_recovered)
from evals.references import SingleModel, best_single, coverage_floor, reference_candidates, single_models
from evals.routers import RouterPredictions
from evals.sweeps import Frontier, eligible_cells, quality_targets, realise, sweep, tradeoff_lambdas
from selector.budget import BudgetTooSmall, assign_budget
from training.metrics import json_floats


@dataclass
class PoolResult:
    label: str
    models: list[str]
    n_prompts: int
    best: SingleModel
    ref: SingleModel | None
    singles: list[SingleModel]
    frontiers: list[Frontier]
    summary: dict[str, dict]              # "<router> / <policy>" -> metrics
    budget: list[dict]
    notes: list[str] = field(default_factory=list)


def _summarise(fr: Frontier, best: SingleModel, ref: SingleModel | None) -> dict:
    x = fr.cost_usd / best.cost_usd
    out = {"auc": area_under_frontier(x, fr.accuracy),
           "auc_points": area_under_points(x, fr.accuracy),
           "max_accuracy": float(fr.accuracy.max()),
           "reach_best_cost_fraction": _div(cost_to_reach(fr.cost_usd, fr.accuracy, best.accuracy), best.cost_usd),
           "accuracy_at_best_cost": accuracy_at_cost(fr.cost_usd, fr.accuracy, best.cost_usd)}
    if ref is not None:
        out["reach_ref_cost_fraction"] = _div(cost_to_reach(fr.cost_usd, fr.accuracy, ref.accuracy), ref.cost_usd)
        out["accuracy_at_ref_cost"] = accuracy_at_cost(fr.cost_usd, fr.accuracy, ref.cost_usd)
    return out


def _div(a: float | None, b: float) -> float | None:
    return None if a is None else a / b


def random_mixing(singles: list[SingleModel], best: SingleModel, names: list[str], quality: np.ndarray,
                  cost_usd: np.ndarray, eligible: np.ndarray, config: EvalConfig) -> Frontier:
    """RouteLLM's random router: each prompt goes to the strong model (the best single one) with
    probability p, else to the weak one (the covered model with the most accuracy per dollar)."""
    weak = max(reference_candidates(singles, config.min_reference_coverage),
               key=lambda m: m.accuracy / m.cost_usd)
    strong_j, weak_j = names.index(best.name), names.index(weak.name)
    draws = np.random.default_rng(config.seed).random(len(quality))
    shares = np.linspace(0.0, 1.0, config.random_mix_points)
    accs, costs, choices = [], [], []
    for p in shares:
        choice = np.where(draws < p, strong_j, weak_j)
        # A draw that lands on an unlabelled cell takes the other model, so every outcome is realised.
        choice = np.where(eligible[np.arange(len(choice)), choice], choice,
                          np.where(choice == strong_j, weak_j, strong_j))
        acc, cost = realise(choice, quality, cost_usd)
        accs.append(acc)
        costs.append(cost)
        choices.append(choice.astype(np.int16))
    return Frontier("random mixing", "random", shares, np.array(costs), np.array(accs),
                    f"weak {weak.name}, strong {best.name}, strong share 0..1", np.stack(choices))


def bootstrap_aucs(frontiers: list[Frontier], quality: np.ndarray, cost_usd: np.ndarray, best_index: int,
                   n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_frontiers) AUCs on prompt resamples: every frontier keeps its decisions and is re-scored,
    normalised by the best single model's cost on the same resample (paired across frontiers)."""
    n = len(quality)
    rows = np.arange(n)
    best_cost = cost_usd[:, best_index]
    best_cost = np.where(np.isnan(best_cost), np.nanmean(best_cost), best_cost)    # (n,)
    realised = [(np.nan_to_num(quality[rows, fr.choices]), np.nan_to_num(cost_usd[rows, fr.choices]))
                for fr in frontiers]                                                # (k, n) each
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, len(frontiers)))
    for b in range(n_boot):
        weight = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)  # (n,)
        ref = float(weight @ best_cost)
        for f, (q, c) in enumerate(realised):
            out[b, f] = area_under_frontier((c @ weight) / ref, (q @ weight) / n)
    return out


def evaluate_pool(label: str, names: list[str], routers: list[RouterPredictions], oracle: RouterPredictions,
                  quality: np.ndarray, cost_usd: np.ndarray, config: EvalConfig, *, no_prompt: str,
                  show_progress: bool = True) -> PoolResult:
    """Every frontier and figure for one pool. `routers[0]` is Routoo: its quality_target sweep and batch
    mode are measured too; `no_prompt` names the router that gap recovered is measured from."""
    eligible = eligible_cells(quality, cost_usd)
    keep = eligible.any(axis=1)
    notes = []
    if not keep.all():
        notes.append(f"{int((~keep).sum())} prompts have no labelled model in this pool and are left out")
        quality, cost_usd, eligible = quality[keep], cost_usd[keep], eligible[keep]
        routers = [RouterPredictions(r.name, r.quality[keep], r.expected_cost_usd[keep], r.note) for r in routers]
        oracle = RouterPredictions(oracle.name, oracle.quality[keep], oracle.expected_cost_usd[keep])
    unknown = int((~eligible).sum())
    if unknown:
        notes.append(f"{unknown} unlabelled (prompt, model) cells are ineligible for every router")
    choices = int((eligible.sum(axis=1) >= 2).sum())
    if choices < len(eligible):
        # A prompt with one labelled model leaves every router the same choice: at 0 such prompts, every
        # router ties and the figures measure nothing about routing.
        notes.append(f"only {choices} of {len(eligible)} prompts have 2 or more labelled models to choose "
                     f"between; on the others every router makes the same choice"
                     + ("; nothing here measures routing" if choices == 0 else ""))
    singles = single_models(names, quality, cost_usd)
    best = best_single(singles, config.min_reference_coverage)
    if best.coverage < config.min_reference_coverage:
        notes.append(f"no model is labelled on {config.min_reference_coverage:.0%} of the prompts; the best "
                     f"single model is chosen among those labelled on at least "
                     f"{coverage_floor(singles, config.min_reference_coverage):.1%}")
    free = [m.name for m in singles if m.cost_usd == 0 and m.accuracy > best.accuracy]
    if free:
        notes.append(f"{free} cost $0 and beat the best single model, which is the most accurate one that "
                     f"costs something")
    ref = None
    if config.ref_model:
        ref = next((m for m in singles if m.name == config.ref_model), None)
        if ref is None:
            notes.append(f"reference model {config.ref_model!r} is not in this pool")
        elif ref.cost_usd == 0:
            notes.append(f"reference model {config.ref_model!r} costs $0 here, so no fraction of its cost "
                         f"exists: left out")
            ref = None
    frontiers: list[Frontier] = []
    for router in [*routers, oracle]:
        lambdas = tradeoff_lambdas(router.quality, router.expected_cost_usd, eligible, config.lambdas)
        frontiers.append(sweep(router, "tradeoff", lambdas, eligible, quality, cost_usd,
                               show_progress=show_progress))
        if router is routers[0]:
            taus = quality_targets(router.quality, eligible, config.taus)
            frontiers.append(sweep(router, "quality_target", taus, eligible, quality, cost_usd,
                                   show_progress=show_progress))
    frontiers.append(random_mixing(singles, best, names, quality, cost_usd, eligible, config))
    summary = {f"{fr.router} / {fr.policy}": _summarise(fr, best, ref) for fr in frontiers}
    if config.bootstrap:
        best_index = names.index(best.name)
        boot = bootstrap_aucs(frontiers, quality, cost_usd, best_index, config.bootstrap, config.seed)
        for f, fr in enumerate(frontiers):
            row = summary[f"{fr.router} / {fr.policy}"]
            row["auc_ci95"] = json_floats(np.percentile(boot[:, f], [2.5, 97.5]))
            diff = boot[:, 0] - boot[:, f]            # Routoo's tradeoff frontier minus this one
            row["routoo_minus_auc_ci95"] = json_floats(np.percentile(diff, [2.5, 97.5]))
            row["routoo_above_share"] = float(np.mean(diff > 0))
    floor, ceiling = summary[f"{no_prompt} / tradeoff"], summary[f"{oracle.name} / tradeoff"]
    for row in summary.values():
        row["gap_recovered"] = gap_recovered(row["auc"], floor["auc"], ceiling["auc"])
        row["gap_recovered_points"] = gap_recovered(row["auc_points"], floor["auc_points"], ceiling["auc_points"])
    budget = budget_sweep(routers[0], frontiers[0], best, eligible, quality, cost_usd, config)
    return PoolResult(label, names, len(quality), best, ref, singles, frontiers, summary, budget, notes)


def budget_sweep(router: RouterPredictions, tradeoff: Frontier, best: SingleModel, eligible: np.ndarray,
                 quality: np.ndarray, cost_usd: np.ndarray, config: EvalConfig) -> list[dict]:
    """RouteBatch (selector.budget.assign_budget) at fractions of the best single model's total cost,
    against the per-prompt tradeoff policy's best single lambda at the same realised spend."""
    out = []
    for fraction in config.budget_fractions:
        budget = fraction * best.cost_usd
        row = {"budget_fraction": fraction, "budget_usd": budget}
        try:
            assignment = assign_budget(router.quality, router.expected_cost_usd, eligible, budget)
        except BudgetTooSmall as e:
            row["error"] = str(e)
            out.append(row)
            continue
        acc, cost = realise(assignment.choice, quality, cost_usd)
        row.update(accuracy=acc, realised_cost_usd=cost, predicted_cost_usd=assignment.total_cost_usd,
                   quality_per_usd=assignment.quality_per_usd,
                   tradeoff_accuracy_at_same_spend=accuracy_at_cost(tradeoff.cost_usd, tradeoff.accuracy, cost))
        out.append(row)
    return out
