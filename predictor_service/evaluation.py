"""Routing evaluation: Routoo's accuracy/cost frontier against baselines, on any canonical dataset.

A router predicts, for every (prompt, model), a quality and an expected cost; one of the selector's
policies (selector/policies.py, called, not copied) turns them into one model per prompt. Sweeping the
policy's parameter gives operating points: (realised total cost, realised accuracy) on the test data.

Definitions (docs/evaluation.md has the recipe and the numbers):
- Reference: the *best single model* is the pool model with the highest test accuracy among those labelled
  on at least `min_reference_coverage` of the prompts (a model labelled only on easy categories would
  otherwise win on a different question set) and costing more than $0. Costs are normalised by its total
  realised cost. Where no model is labelled on that share, 90% of the best-labelled model's share is asked.
- Frontier: the upper concave, non-decreasing hull of a router's operating points and the origin. Any two
  operating points can be mixed at random, so every point of the hull is reachable (RouterBench's AIQ).
  The no-prompt router's frontier is thus the best any fixed mix of models can do.
- AUC: area under the frontier over normalised cost in [0, 1], flat beyond the router's dearest point.
- Gap recovered (RouteLLM's APGR against the no-prompt router):
  (AUC - AUC_no_prompt) / (AUC_oracle - AUC_no_prompt).
- Reach / accuracy-at-cost figures use single operating points (one lambda, no mixing): the cheapest point
  whose accuracy reaches the reference's, and the best accuracy of a point that costs at most the reference.
- Cells with an unknown label (NaN quality or cost) cannot be realised: the model is ineligible for that
  prompt, for every router alike (the selector's `eligible` mask).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from predictor_service import baselines
from predictor_service.artifact import Artifact
from predictor_service.data import RoutingDataset
from predictor_service.head import log_lengths, reference_score
from predictor_service.metrics import auroc_per_model, quality_metrics
from predictor_service.training import TrainConfig, add_model, embed_cached, train
from predictor_service.eval_config import EvalConfig
from selector.policies import BudgetTooSmall, assign_budget, make_policy

log = logging.getLogger(__name__)


# --- predictions ---------------------------------------------------------------------------------------

@dataclass
class RouterPredictions:
    """What one router believes about the test prompts; decisions are made from these alone."""

    name: str
    quality: np.ndarray             # (n_prompts, n_models) predicted quality
    expected_cost_usd: np.ndarray   # (n_prompts, n_models) predicted cost used for deciding
    note: str = ""

    def columns(self, cols: np.ndarray) -> "RouterPredictions":
        return RouterPredictions(self.name, self.quality[:, cols], self.expected_cost_usd[:, cols], self.note)


def artifact_predictions(artifact: Artifact, texts: list[str], *,
                         show_progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quality, expected_cost_usd, prompt_embedding) of an artifact on texts, through the head's reference
    math (the same as the fused kernel), with embeddings cached like training's; a lexical part's logits added."""
    manifest = artifact.manifest
    encoder = artifact.load_encoder()
    x = embed_cached(encoder, texts, show_progress=show_progress)
    offset = None
    if artifact.lexical is not None:
        tokens = encoder.tokenize(texts)
        offset = artifact.lexical.logits(tokens.token_ids, tokens.offsets, impl="reference").numpy()
    quality, cost = reference_score(artifact.weights, x, log_lengths(texts).numpy(), manifest.inv_temperature,
                                    offset)
    return quality, cost, x


def knn_quality(train_x: np.ndarray, train_quality: np.ndarray, test_x: np.ndarray, k: int,
                *, chunk: int = 1024) -> np.ndarray:
    """(n_test, n_models): mean label of the k nearest train prompts by cosine similarity (embeddings are
    L2-normalised); unknown labels are skipped, a model with none among the k gets its train mean."""
    known = ~np.isnan(train_quality)
    labels = np.nan_to_num(train_quality, nan=0.0)
    prior = np.nan_to_num(np.nanmean(train_quality, axis=0), nan=0.5)
    out = np.empty((len(test_x), train_quality.shape[1]), dtype=np.float32)
    k = min(k, len(train_x))
    for start in range(0, len(test_x), chunk):
        sim = test_x[start:start + chunk] @ train_x.T                      # (chunk, n_train)
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]              # (chunk, k)
        total = labels[nearest].sum(axis=1)                                # (chunk, n_models)
        count = known[nearest].sum(axis=1)
        out[start:start + chunk] = np.where(count > 0, total / np.maximum(count, 1), prior)
    return out


def no_prompt_router(train_quality: np.ndarray, train_cost: np.ndarray, n_prompts: int) -> RouterPredictions:
    """Every prompt alike: each model's train accuracy and mean train cost (the best any fixed mix can do)."""
    return RouterPredictions("no-prompt (per-model mean)",
                             baselines.per_model_mean(train_quality, n_prompts).astype(np.float64),
                             mean_cost(train_cost, n_prompts), "train mean quality and mean cost per model")


def oracle_router(quality: np.ndarray, cost_usd: np.ndarray) -> RouterPredictions:
    """The test labels and realised costs themselves; unlabelled cells are ineligible for every router, and
    the zeros only keep the arrays finite."""
    return RouterPredictions("oracle", np.nan_to_num(quality, nan=0.0), np.nan_to_num(cost_usd, nan=0.0),
                             "true labels and realised costs")


def mean_cost(train_cost: np.ndarray, n_prompts: int) -> np.ndarray:
    """(n_prompts, n_models): each model's mean train cost per prompt (no prompt information)."""
    means = np.nan_to_num(np.nanmean(train_cost, axis=0), nan=0.0)
    return np.broadcast_to(means, (n_prompts, len(means))).astype(np.float64)


# --- sweeps with the selector's policies --------------------------------------------------------------

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
                "parameters": _floats(self.parameters), "cost_usd": _floats(self.cost_usd),
                "normalised_cost": _floats(self.cost_usd / ref_cost_usd), "accuracy": _floats(self.accuracy)}


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


# --- frontier metrics ------------------------------------------------------------------------------------

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


# --- single models and references ---------------------------------------------------------------------

@dataclass(frozen=True)
class SingleModel:
    name: str
    accuracy: float           # over the prompts where it is labelled
    cost_usd: float           # mean labelled cost x all prompts
    coverage: float           # share of prompts labelled


def single_models(names: list[str], quality: np.ndarray, cost_usd: np.ndarray) -> list[SingleModel]:
    n = len(quality)
    out = []
    for j, name in enumerate(names):
        known = ~np.isnan(quality[:, j]) & ~np.isnan(cost_usd[:, j])
        if not known.any():
            continue
        out.append(SingleModel(name, float(quality[known, j].mean()), float(cost_usd[known, j].mean() * n),
                               float(known.mean())))
    return out


# Where every model has gaps, a reference must be labelled on this share of the best-labelled model's
# prompts: random gaps (coverage within a few points of each other) all pass, a model missing whole
# categories (DeepSeek-Coder-V2 on mmlu-pro/dev: 86% against 100%) does not.
GAPPY_COVERAGE_SHARE = 0.9


def coverage_floor(models: list[SingleModel], min_coverage: float) -> float:
    """The share of prompts a reference must be labelled on: `min_coverage`, or where no model that costs
    something reaches it, GAPPY_COVERAGE_SHARE of the best-labelled such model's share."""
    top = max((m.coverage for m in models if m.cost_usd > 0), default=0.0)
    return min_coverage if top >= min_coverage else GAPPY_COVERAGE_SHARE * top


def reference_candidates(models: list[SingleModel], min_coverage: float) -> list[SingleModel]:
    """Models that may be a reference: costing something (costs are normalised by the reference's) and
    labelled on the coverage_floor share of the prompts."""
    if not models:
        raise ValueError("no pool model has both a known score and a known cost on any prompt")
    paid = [m for m in models if m.cost_usd > 0]
    if not paid:
        raise ValueError(f"every pool model costs $0 here, so there is no cost to trade against and none to "
                         f"normalise by: {[m.name for m in models]}")
    floor = coverage_floor(paid, min_coverage)
    return [m for m in paid if m.coverage >= floor]


def best_single(models: list[SingleModel], min_coverage: float) -> SingleModel:
    """The most accurate reference candidate (the cheaper of ties)."""
    return max(reference_candidates(models, min_coverage), key=lambda m: (m.accuracy, -m.cost_usd))


def closed_model(name: str, prefixes: tuple[str, ...]) -> bool:
    return name.lower().startswith(tuple(p.lower() for p in prefixes))


# --- the evaluation ------------------------------------------------------------------------------------

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


def _eligible(quality: np.ndarray, cost_usd: np.ndarray) -> np.ndarray:
    return ~np.isnan(quality) & ~np.isnan(cost_usd)


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
    eligible = _eligible(quality, cost_usd)
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
            row["auc_ci95"] = _floats(np.percentile(boot[:, f], [2.5, 97.5]))
            diff = boot[:, 0] - boot[:, f]            # Routoo's tradeoff frontier minus this one
            row["routoo_minus_auc_ci95"] = _floats(np.percentile(diff, [2.5, 97.5]))
            row["routoo_above_share"] = float(np.mean(diff > 0))
    floor, ceiling = summary[f"{no_prompt} / tradeoff"], summary[f"{oracle.name} / tradeoff"]
    for row in summary.values():
        row["gap_recovered"] = gap_recovered(row["auc"], floor["auc"], ceiling["auc"])
        row["gap_recovered_points"] = gap_recovered(row["auc_points"], floor["auc_points"], ceiling["auc_points"])
    budget = budget_sweep(routers[0], frontiers[0], best, eligible, quality, cost_usd, config)
    return PoolResult(label, names, len(quality), best, ref, singles, frontiers, summary, budget, notes)


def budget_sweep(router: RouterPredictions, tradeoff: Frontier, best: SingleModel, eligible: np.ndarray,
                 quality: np.ndarray, cost_usd: np.ndarray, config: EvalConfig) -> list[dict]:
    """RouteBatch (selector.policies.assign_budget) at fractions of the best single model's total cost,
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


def choose_knn_k(train_x: np.ndarray, train_quality: np.ndarray, train_cost: np.ndarray,
                 decision_cost: np.ndarray, config: EvalConfig, names: list[str]) -> tuple[int, dict[int, float]]:
    """k with the best tradeoff-frontier AUC on a held-out part of train (the test split is never read)."""
    order = np.random.default_rng(config.seed).permutation(len(train_x))
    cut = max(1, int(len(order) * config.knn_holdout))
    held, fit = np.sort(order[:cut]), np.sort(order[cut:])
    q, c = train_quality[held], train_cost[held]
    eligible = _eligible(q, c)
    keep = eligible.any(axis=1)
    q, c, eligible = q[keep], c[keep], eligible[keep]
    held = held[keep]
    singles = single_models(names, q, c)
    best = best_single(singles, config.min_reference_coverage)
    scores = {}
    ks = [k for k in config.knn_ks if k <= len(fit)] or [len(fit)]
    for k in ks:
        pred = RouterPredictions(f"kNN-{k}", knn_quality(train_x[fit], train_quality[fit], train_x[held], k),
                                 decision_cost[held])
        lambdas = tradeoff_lambdas(pred.quality, pred.expected_cost_usd, eligible, config.lambdas // 2)
        fr = sweep(pred, "tradeoff", lambdas, eligible, q, c)
        scores[k] = area_under_frontier(fr.cost_usd / best.cost_usd, fr.accuracy)
    return max(scores, key=scores.get), scores


def evaluate(train_ds: RoutingDataset, test_ds: RoutingDataset, artifact: Artifact, *,
             pool: list[str] | None = None, config: EvalConfig | None = None,
             show_progress: bool = True) -> dict:
    """The full evaluation: every pool's frontiers, baselines, figures and the RouteBatch sweep, as JSON-able
    data. `pool` restricts the models (default: those both the artifact and the test data have)."""
    config = config or EvalConfig()
    art_names = artifact.manifest.model_names
    if pool is None:
        pool = [n for n in test_ds.model_names if n in art_names]
        missing = [n for n in test_ds.model_names if n not in art_names]
        if missing:
            log.warning("test models the artifact does not predict, left out: %s", missing)
    else:
        unknown = [n for n in pool if n not in art_names or n not in test_ds.model_names]
        if unknown:
            raise ValueError(f"--pool model(s) {unknown} are not in both the artifact and the test data; "
                             f"choose from {[n for n in art_names if n in test_ds.model_names]}")
    if not pool:
        raise ValueError(f"the artifact's models {art_names} and the test data's {test_ds.model_names} share none")
    missing_train = [n for n in pool if n not in train_ds.model_names]
    if missing_train:
        raise ValueError(f"pool model(s) {missing_train} have no train labels for the baselines; "
                         f"the train data has {train_ds.model_names}")
    test = test_ds.select_models(pool)
    train_sub = train_ds.select_models(pool)
    art_cols = [art_names.index(n) for n in pool]

    quality_pred, cost_pred, test_x = artifact_predictions(artifact, test.texts, show_progress=show_progress)
    encoder_name = artifact.manifest.encoder
    head = RouterPredictions(f"routoo ({encoder_name})", quality_pred[:, art_cols], cost_pred[:, art_cols])
    train_q_pred, train_cost_pred, train_x = artifact_predictions(artifact, train_sub.texts,
                                                                  show_progress=show_progress)
    del train_q_pred
    train_cost_pred = train_cost_pred[:, art_cols]

    no_prompt = no_prompt_router(train_sub.quality, train_sub.cost_usd, len(test))
    k, k_scores = choose_knn_k(train_x, train_sub.quality, train_sub.cost_usd, train_cost_pred, config, pool)
    knn = RouterPredictions(f"kNN-{k} ({encoder_name})", knn_quality(train_x, train_sub.quality, test_x, k),
                            head.expected_cost_usd, f"k from {k_scores} (held-out train frontier AUC)")
    routers = [head, no_prompt, knn]
    if config.tfidf:
        tfidf = baselines.tfidf_logistic(train_sub.texts, train_sub.quality, test.texts)
        routers.append(RouterPredictions("TF-IDF + LR", tfidf, head.expected_cost_usd))
    oracle = oracle_router(test.quality, test.cost_usd)
    quality_metrics_rows = {r.name: rounded_metrics(quality_metrics(test.quality, r.quality))
                            for r in routers if r is not no_prompt}
    quality_metrics_rows[no_prompt.name] = rounded_metrics(quality_metrics(test.quality, no_prompt.quality))

    pools = {"full": pool}
    open_pool = [n for n in pool if not closed_model(n, config.closed_model_prefixes)]
    if open_pool and len(open_pool) < len(pool):
        pools["open-weights"] = open_pool
    results = {}
    for label, names in pools.items():
        cols = np.array([pool.index(n) for n in names])
        results[label] = evaluate_pool(label, names, [r.columns(cols) for r in routers], oracle.columns(cols),
                                       test.quality[:, cols], test.cost_usd[:, cols], config,
                                       no_prompt=no_prompt.name, show_progress=show_progress)
    return {"meta": run_meta(artifact, train_ds, test_ds),
            "config": asdict(config),
            "knn": {"k": k, "holdout_auc_by_k": {str(kk): v for kk, v in k_scores.items()}},
            "quality_metrics": quality_metrics_rows,
            "routers": {r.name: r.note for r in [*routers, oracle]},
            "pools": {label: pool_json(res) for label, res in results.items()},
            "_results": results}


# --- the add-model experiment ------------------------------------------------------------------------------

def add_model_experiment(train_ds: RoutingDataset, test_ds: RoutingDataset, model: str, *,
                         encoder_name: str, full_artifact: Artifact | None = None,
                         sizes: tuple[int, ...] = (50, 200, 1000), repeats: int = 5,
                         train_config: TrainConfig | None = None, seed: int = 0,
                         show_progress: bool = True) -> dict:
    """Drops `model` from training, adds it back from n of its labelled train prompts (`add_model`, every
    other row frozen), and measures its test AUROC against the head trained with all data."""
    if model not in train_ds.model_names or model not in test_ds.model_names:
        raise ValueError(f"model {model!r} must be in both datasets; train has {train_ds.model_names}")
    others = [n for n in train_ds.model_names if n != model]
    j = train_ds.model_names.index(model)
    test_j = test_ds.model_names.index(model)
    y_test = test_ds.quality[:, [test_j]]
    if train_config is None and full_artifact is not None:
        # Train the model-less head exactly like the reference one.
        recorded = full_artifact.manifest.training.get("config", {})
        known = set(TrainConfig.__dataclass_fields__)
        train_config = TrainConfig(**{k: v for k, v in recorded.items() if k in known})
    if full_artifact is None or full_artifact.manifest.encoder != encoder_name:
        full_artifact, _ = train(train_ds, None, encoder_name=encoder_name, config=train_config,
                                 show_progress=show_progress)
    full_q, _, _ = artifact_predictions(full_artifact, test_ds.texts)
    full_auroc = float(auroc_per_model(y_test, full_q[:, [full_artifact.manifest.model_names.index(model)]])[0])
    without, _ = train(train_ds.select_models(others), None, encoder_name=encoder_name, config=train_config,
                       show_progress=show_progress)
    labelled = np.flatnonzero(~np.isnan(train_ds.quality[:, j]))
    pool_model = train_ds.pool[j]
    prices = [pool_model.input_usd_per_mtok, pool_model.output_usd_per_mtok]
    rows = []
    for size in [*sizes, len(labelled)]:
        aurocs = []
        for r in range(repeats if size < len(labelled) else 1):
            pick = np.random.default_rng(seed + r).permutation(labelled)[:size]
            added = add_model(without, model, prices, [train_ds.prompts[i].text for i in pick],
                              train_ds.quality[pick, j], train_ds.cost_usd[pick, j])
            q, _, _ = artifact_predictions(added, test_ds.texts)
            aurocs.append(float(auroc_per_model(y_test, q[:, [-1]])[0]))
        rows.append({"n_labelled": int(min(size, len(labelled))), "auroc_mean": float(np.mean(aurocs)),
                     "auroc_std": float(np.std(aurocs)), "repeats": len(aurocs)})
    return {"model": model, "encoder": encoder_name, "full_training_auroc": full_auroc, "add_model": rows,
            "n_test_labelled": int((~np.isnan(y_test)).sum())}


def format_add_model(result: dict) -> str:
    lines = [f"add-model: {result['model']} dropped from training, added back ({result['encoder']} encoder; "
             f"test AUROC over {result['n_test_labelled']} labelled prompts)",
             f"{'labelled prompts':<22}{'AUROC':>8}{'+/- std':>9}{'repeats':>9}"]
    for row in result["add_model"]:
        lines.append(f"{row['n_labelled']:<22}{row['auroc_mean']:>8.4f}{row['auroc_std']:>9.4f}{row['repeats']:>9}")
    lines.append(f"{'full training':<22}{result['full_training_auroc']:>8.4f}")
    return "\n".join(lines)


# --- output --------------------------------------------------------------------------------------------

def _floats(a) -> list[float]:
    """JSON-ready floats at 6 significant digits (4x the resolution any figure here is quoted at)."""
    return [float(f"{v:.6g}") for v in np.asarray(a, dtype=float)]


def rounded_metrics(metrics: dict) -> dict:
    return {k: round(v, 5) for k, v in metrics.items() if isinstance(v, float)}


def pool_json(res: PoolResult) -> dict:
    return {"models": res.models, "n_prompts": res.n_prompts, "notes": res.notes,
            "best_single": asdict(res.best), "ref": asdict(res.ref) if res.ref else None,
            "single_models": [asdict(m) | {"normalised_cost": m.cost_usd / res.best.cost_usd} for m in res.singles],
            "summary": res.summary, "budget": res.budget,
            "frontiers": [fr.to_json(res.best.cost_usd) for fr in res.frontiers]}


def run_meta(artifact: Artifact, train_ds: RoutingDataset, test_ds: RoutingDataset) -> dict:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "git_revision": rev,
            "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
            "python": platform.python_version(), "torch": torch.__version__,
            "encoder": artifact.manifest.encoder, "inv_temperature": artifact.manifest.inv_temperature,
            "artifact_training": artifact.manifest.training,
            "train_digest": train_ds.digest, "test_digest": test_ds.digest,
            "n_train": len(train_ds), "n_test": len(test_ds)}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_tables(report: dict) -> str:
    lines = []
    for label, pool in report["pools"].items():
        best, ref = pool["best_single"], pool["ref"]
        lines.append(f"\n== pool: {label} ({len(pool['models'])} models, {pool['n_prompts']} prompts) ==")
        lines.append(f"best single model: {best['name']} (accuracy {best['accuracy']:.3f}, ${best['cost_usd']:.4f})"
                     + (f"; ref: {ref['name']} (accuracy {ref['accuracy']:.3f}, ${ref['cost_usd']:.4f})" if ref else ""))
        for note in pool["notes"]:
            lines.append(f"note: {note}")
        head = (f"{'router / policy':<46}{'AUC':>7}{'gap rec.':>9}{'routoo-AUC 95% CI':>19}{'AUC pts':>8}"
                f"{'gap pts':>8}{'max acc':>8}{'reach best':>11}{'acc@best$':>10}")
        if ref:
            head += f"{'reach ref':>10}{'acc@ref$':>9}"
        lines.append(head)
        first = next(iter(pool["summary"]))
        for name, row in pool["summary"].items():
            ci = row.get("routoo_minus_auc_ci95")
            ci_text = "-" if ci is None or name == first else f"[{ci[0]:+.4f},{ci[1]:+.4f}]"
            line = (f"{name[:45]:<46}{row['auc']:>7.4f}{_fmt(row['gap_recovered'], '.3f'):>9}{ci_text:>19}"
                    f"{row['auc_points']:>8.4f}{_fmt(row['gap_recovered_points'], '.3f'):>8}{row['max_accuracy']:>8.3f}{_fmt(row['reach_best_cost_fraction'], '.3f'):>11}"
                    f"{_fmt(row['accuracy_at_best_cost'], '.3f'):>10}")
            if ref:
                line += (f"{_fmt(row.get('reach_ref_cost_fraction'), '.3f'):>10}"
                         f"{_fmt(row.get('accuracy_at_ref_cost'), '.3f'):>9}")
            lines.append(line)
        for fr in pool["frontiers"]:
            if fr["note"]:
                lines.append(f"{fr['router']}: {fr['note']}")
        lines.append("AUC: frontier = concave hull (operating points may be mixed); routoo-AUC 95% CI: paired "
                     "bootstrap over prompts of Routoo's AUC minus the row's; AUC pts: single operating "
                     "points only.\nreach X: cost, as a fraction of X's, at which one operating point first "
                     "reaches X's accuracy; acc@X$: best accuracy at X's cost or less")
        lines.append(f"{'RouteBatch budget':<20}{'accuracy':>9}{'spent/budget':>13}{'per-prompt lambda acc':>23}")
        for row in pool["budget"]:
            if "error" in row:
                lines.append(f"{row['budget_fraction']:>6.0%} of best      {row['error']}")
                continue
            lines.append(f"{row['budget_fraction']:>6.0%} of best       {row['accuracy']:>9.3f}"
                         f"{row['realised_cost_usd'] / row['budget_usd']:>13.3f}"
                         f"{_fmt(row['tradeoff_accuracy_at_same_spend'], '.3f'):>23}")
        lines.append(f"{'single model':<34}{'accuracy':>9}{'cost/best':>10}{'coverage':>9}")
        for m in sorted(pool["single_models"], key=lambda m: m["cost_usd"]):
            lines.append(f"{m['name'][:33]:<34}{m['accuracy']:>9.3f}{m['normalised_cost']:>10.4f}{m['coverage']:>9.3f}")
    return "\n".join(lines)


def write_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=1) + "\n")
    return path


def plot_frontiers(report: dict, path: str | Path) -> Path:
    """One panel per pool: each router's frontier (hull) and operating points, single models labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = report["pools"]
    fig, axes = plt.subplots(1, len(pools), figsize=(8 * len(pools), 6.5), squeeze=False)
    for ax, (label, pool) in zip(axes[0], pools.items()):
        for i, fr in enumerate(pool["frontiers"]):
            x, y = np.array(fr["normalised_cost"]), np.array(fr["accuracy"])
            hx, hy = frontier_hull(x, y)
            name = f"{fr['router']} / {fr['policy']}"
            auc = pool["summary"][name]["auc"]
            color = f"C{i % 10}"
            # The hull is piecewise linear in cost; sample it densely so the log axis shows it faithfully.
            start = hx[hx > 0].min() if (hx > 0).any() else 1e-3
            grid = np.geomspace(start, max(1.0, hx.max()), 400)
            ax.plot(grid, frontier_value(hx, hy, grid), "-", color=color, lw=1.8 if i == 0 else 1.2,
                    label=f"{name} (AUC {auc:.3f})")
            ax.plot(x[x > 0], y[x > 0], ".", color=color, ms=2, alpha=0.5)
        for m in pool["single_models"]:
            ax.plot(m["normalised_cost"], m["accuracy"], "k^", ms=4)
            ax.annotate(m["name"], (m["normalised_cost"], m["accuracy"]), fontsize=5.5,
                        xytext=(3, -2), textcoords="offset points")
        ax.set_xscale("log")
        ax.axvline(1.0, color="grey", lw=0.6, ls=":")
        ax.set_xlabel(f"total cost / cost of {pool['best_single']['name']} (log scale)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{label} pool, {pool['n_prompts']} prompts")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=140)
    plt.close(fig)
    return path
