"""The budgeted batch assignment of RouteBatch: one eligible model per prompt, maximising summed quality with
the summed expected cost within a total budget. Pure numpy, no gRPC.

`quality` and `expected_cost_usd` are (batch, n_models) arrays in pool order and `eligible` the mask the
constraints leave (selector/constraints.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from selector.constraints import InvalidRequest


class BudgetTooSmall(ValueError):
    """Even the cheapest eligible model for every prompt costs more than the budget."""


@dataclass(frozen=True)
class BudgetAssignment:
    choice: np.ndarray          # (batch,) chosen model per prompt
    total_cost_usd: float       # math.fsum of the chosen expected costs; never above the budget
    total_quality: float
    quality_per_usd: float      # the price of cost the relaxation settled on (0 if the budget never binds)


def assign_budget(quality: np.ndarray, expected_cost_usd: np.ndarray, eligible: np.ndarray,
                  budget_usd: float, *, max_iterations: int = 100, repair_rows: int = 256) -> BudgetAssignment:
    """Maximise sum(quality) subject to sum(expected cost) <= budget_usd, one eligible model per row.

    A multiple-choice knapsack, solved by Lagrangian relaxation: each row picks argmax quality - lam x cost,
    and bisection finds the smallest price lam whose total cost fits the budget. Rows whose choice is the
    same at both ends of the bracket are settled and leave the loop, so late iterations touch only the few
    rows still switching. Greedy repairs then spend what the relaxation leaves: (1) upgrades in order of
    quality per dollar while they fit; (2) alternatively, the most valuable switching upgrade that did not
    fit, paid for by downgrading other rows; then, on the better of the two, (3) exchanges of one upgrade
    against one downgrade elsewhere while that gains. The relaxation is at most one row's quality range below the
    optimum (the bound the tests check on adversarial instances), the repairs only add, and the result
    never exceeds the budget (checked with math.fsum). Quality and cost must be finite where eligible.

    The repairs look only at the `repair_rows` rows nearest the margin (smallest reduced cost at lam) plus
    the switching ones: any other change gains at most lam x the leftover budget, which those rows offer too.
    """
    if not budget_usd >= 0:
        raise InvalidRequest("total_budget_usd", f"must be a number >= 0, got {budget_usd}")
    # float32 scores (what Triton returns) stay float32: every full pass reads half the bytes. Totals are
    # always summed in float64.
    dtype = np.float32 if np.result_type(quality, expected_cost_usd) == np.float32 else np.float64
    q = np.asarray(quality, dtype=dtype)                  # (batch, n_models)
    c = np.asarray(expected_cost_usd, dtype=dtype)
    if not eligible.all():
        q, c = np.where(eligible, q, -np.inf), np.where(eligible, c, np.inf)
    rows = np.arange(len(q))

    cheapest = _first_of_ties(c, -q)
    cheapest_cost = math.fsum(c[rows, cheapest].tolist())
    if cheapest_cost > budget_usd:
        raise BudgetTooSmall(f"total_budget_usd: {budget_usd:.6g} is below ${cheapest_cost:.6g}, the cost of the "
                             f"cheapest eligible model for every prompt")
    best = _first_of_ties(-q, c)
    if _total(c, best) <= budget_usd:
        return _result(q, c, best, budget_usd, cheapest, 0.0)

    lam, choice_lo, choice_hi = _bisect(q, c, budget_usd, best, cheapest, max_iterations)

    # The repairs work on a few rows; the others keep their relaxed choice and its cost.
    part = _margin_rows(q, c, choice_hi, choice_lo, lam, repair_rows)
    qp, cp = q[part], c[part]
    budget_part = budget_usd - (_total(c, choice_hi) - _total(cp, choice_hi[part]))
    repaired = _fill_upward(qp, cp, choice_hi[part], budget_part, choice_lo[part])
    forced = _force_upgrade(qp, cp, repaired, budget_part, choice_lo[part])
    if forced is not None and _total(qp, forced) > _total(qp, repaired):
        repaired = forced
    repaired = _exchange(qp, cp, repaired, budget_part)
    choice = choice_hi.copy()
    choice[part] = repaired
    return _result(q, c, choice, budget_usd, cheapest, lam)


def _first_of_ties(key: np.ndarray, tie_key: np.ndarray) -> np.ndarray:
    """(batch,) argmin of `key` per row, exact ties broken by the smallest `tie_key`.

    Only rows that have a tie pay for the second pass (np.where over the whole matrix costs ~1.5 ms).
    """
    ties = key == key.min(axis=1, keepdims=True)
    choice = ties.argmax(axis=1)
    tied = np.flatnonzero(np.count_nonzero(ties, axis=1) > 1)
    if tied.size:
        choice[tied] = np.where(ties[tied], tie_key[tied], np.inf).argmin(axis=1)
    return choice


def _bisect(q, c, budget_usd, best, cheapest, max_iterations, *, sample_rows: int = 1024):
    """Bisection on lam: returns (lam, choices just below it (over budget), choices at it (within budget))."""
    n = len(q)
    rows = np.arange(n)
    scratch = np.empty_like(q)      # full-size passes reuse one buffer: a fresh 2.5 MB array costs page faults

    # Exact ties in quality - lam x cost at lam > 0 need identical (quality, cost) pairs, which are
    # interchangeable, so a plain argmax suffices here. lam stays > 0, so ineligible cells stay -inf.
    def pick(r, lam):
        if r is rows:
            np.multiply(c, -lam, out=scratch)
            return np.add(scratch, q, out=scratch).argmax(axis=1)
        return (q[r] - lam * c[r]).argmax(axis=1)

    def fits(choice):
        return _total(c, choice) <= budget_usd

    cheapest_cost, best_cost = _total(c, cheapest), _total(c, best)
    # First guess: the average price of the whole move from cheapest to best, stepping out by x8.
    guess = max((_total(q, best) - _total(q, cheapest)) / max(best_cost - cheapest_cost, 1e-300), 1e-300)
    step = 8.0
    if n > 4 * sample_rows:
        # A large batch prices an evenly spread sample first, at the same share of its own cost range. Its
        # lam lands within a few % of the full one, so the full bracket starts at +-10% and only the rows
        # switching inside it stay in the loop: on 10,000 x 32, ~5x fewer row-passes than from x8.
        sample = np.linspace(0, n - 1, sample_rows).astype(np.int64)
        low, high = _total(c[sample], cheapest[sample]), _total(c[sample], best[sample])
        if high > low:
            share = (budget_usd - cheapest_cost) / (best_cost - cheapest_cost)
            guess, _, _ = _bisect(q[sample], c[sample], low + share * (high - low), best[sample],
                                  cheapest[sample], max_iterations)
            step = 1.1

    lo, choice_lo = 0.0, best.copy()
    hi, choice_hi = math.inf, cheapest.copy()
    lam = guess
    for _ in range(64):
        choice = pick(rows, lam)
        if fits(choice):
            hi, choice_hi = lam, choice
            if lo > 0 or lam < guess * 1e-12 or lam < 1e-300:    # no price makes it infeasible
                break
            lam /= step
        else:
            lo, choice_lo = lam, choice
            if math.isfinite(hi) or lam > 1e30:
                break
            lam *= step
        step = min(step * step, 1e3)     # a far-off guess is bracketed in a few steps
    if not math.isfinite(hi):
        # Only float rounding keeps every finite price over budget; the cheapest assignment fits (the
        # caller checked it with math.fsum).
        return lo, choice_lo, choice_hi

    active = np.flatnonzero(choice_lo != choice_hi)
    settled_cost = _total(c, choice_hi) - c[active, choice_hi[active]].sum(dtype=np.float64)
    for _ in range(max_iterations):
        if active.size == 0 or not hi - lo > 1e-9 * hi:
            break
        if hi > 4 * lo:    # prices span decades: bisect on a log scale while the bracket is wide
            mid = math.sqrt(max(lo, hi * 1e-12) * hi)
        else:
            mid = 0.5 * (lo + hi)
        if not lo < mid < hi:      # the bracket is down to float resolution (or mid underflowed to 0)
            break
        choice = pick(active, mid)
        if settled_cost + c[active, choice].sum(dtype=np.float64) <= budget_usd:
            hi, choice_hi[active] = mid, choice
        else:
            lo, choice_lo[active] = mid, choice
        # A row with the same choice at both ends keeps it in between: its cost is monotone in lam.
        still = choice_lo[active] != choice_hi[active]
        settled_cost += c[active[~still], choice_hi[active[~still]]].sum(dtype=np.float64)
        active = active[still]
    return hi, choice_lo, choice_hi


def _margin_rows(q, c, choice, switching_to, lam, k):
    """Rows whose choice is cheapest to change at price lam: the switching ones and the k of smallest
    reduced cost (utility of the choice minus that of the row's runner-up)."""
    n = len(q)
    if n <= k:
        return np.arange(n)
    rows = np.arange(n)
    utility = q - lam * c           # lam > 0: ineligible cells (q = -inf, c = +inf) stay -inf
    reduced = utility[rows, choice][:, None] - utility
    reduced[rows, choice] = np.inf
    margin = reduced.min(axis=1)
    nearest = np.argpartition(margin, k)[:k]
    return np.union1d(nearest, np.flatnonzero(switching_to != choice))


def _fill_upward(q, c, choice, budget_usd, targets):
    """Greedy upgrades within the slack: first rows towards `targets`, then each row's largest affordable gain."""
    rows = np.arange(len(q))
    choice = choice.copy()
    slack = budget_usd - _total(c, choice)
    candidates = np.flatnonzero(q[rows, targets] > q[rows, choice])
    slack = _take_in_order(q, c, choice, candidates, targets[candidates], slack)
    for _ in range(2):   # a second round catches what the first one's leftovers afford
        chosen_q, chosen_c = q[rows, choice], c[rows, choice]
        affordable = (c - chosen_c[:, None] <= slack) & (q > chosen_q[:, None])
        candidates = np.flatnonzero(affordable.any(axis=1))
        if candidates.size == 0:
            break
        gain = np.where(affordable[candidates], q[candidates] - chosen_q[candidates, None], -np.inf)
        before = slack
        slack = _take_in_order(q, c, choice, candidates, gain.argmax(axis=1), slack)
        if slack == before:
            break
    return choice


def _take_in_order(q, c, choice, candidate_rows, targets, slack):
    """Moves candidate rows to their targets in order of quality gained per extra dollar, while they fit.

    Updates `choice` in place and returns the slack left. Upgrades that are also cheaper count as free.
    """
    if candidate_rows.size == 0:
        return slack
    current = choice[candidate_rows]
    gain = q[candidate_rows, targets] - q[candidate_rows, current]
    extra = np.maximum(c[candidate_rows, targets] - c[candidate_rows, current], 0.0)
    with np.errstate(divide="ignore"):
        efficiency = np.where(extra > 0, gain / np.maximum(extra, 1e-300), np.inf)
    for k in np.argsort(-efficiency, kind="stable"):
        if extra[k] <= slack:
            choice[candidate_rows[k]] = targets[k]
            slack -= float(extra[k])
    return slack


def _force_upgrade(q, c, choice, budget_usd, targets):
    """The most valuable upgrade to `targets` still missing, paid for by downgrading other rows; or None."""
    rows = np.arange(len(q))
    gain = q[rows, targets] - q[rows, choice]
    if not (gain > 0).any():
        return None
    critical = int(np.argmax(gain))
    forced = choice.copy()
    forced[critical] = targets[critical]
    excess = _total(c, forced) - budget_usd
    for _ in range(3):
        if excess <= 0:
            break
        # Per row, the cheaper model that loses the least quality per dollar freed.
        loss = np.maximum(q[rows, forced][:, None] - q, 0.0)
        freed = c[rows, forced][:, None] - c
        cheaper = freed > 0
        cheaper[critical] = False
        movable = np.flatnonzero(cheaper.any(axis=1))
        if movable.size == 0:
            return None
        ratio = np.divide(loss, freed, out=np.full_like(freed, np.inf), where=cheaper)
        down = ratio.argmin(axis=1)
        order = movable[np.argsort(ratio[movable, down[movable]], kind="stable")]
        needed = int(np.searchsorted(np.cumsum(freed[order, down[order]]), excess)) + 1
        greedy_loss = loss[order[:needed], down[order[:needed]]].sum(dtype=np.float64)
        # When one move frees enough on its own, the least lossy such move can beat the ratio order
        # (which may pick a big, efficient downgrade where a small one would do).
        covers = cheaper & (freed >= excess)
        single = np.unravel_index(np.where(covers, loss, np.inf).argmin(), loss.shape)
        if covers[single] and loss[single] < greedy_loss:
            forced[single[0]] = single[1]
        else:
            forced[order[:needed]] = down[order[:needed]]
        excess = _total(c, forced) - budget_usd
    if excess > 0:
        return None
    return _fill_upward(q, c, forced, budget_usd, forced)


def _exchange(q, c, choice, budget_usd, rounds: int = 4):
    """Pairs an upgrade too big for the slack with the least lossy downgrade (in another row) that pays for
    it, best net gain first; then fills upward again. A few rounds, each one pass over the rows given."""
    rows = np.arange(len(q))
    for _ in range(rounds):
        slack = budget_usd - _total(c, choice)
        gain = q - q[rows, choice][:, None]            # (rows, n_models)
        extra = c - c[rows, choice][:, None]
        down_row, down_model = np.nonzero(extra < 0)
        up_row, up_model = np.nonzero((gain > 0) & (extra > slack))
        if down_row.size == 0 or up_row.size == 0:
            break
        # Downgrades sorted by dollars freed; the suffix minimum of their loss answers "least loss among
        # the downgrades freeing at least x" with one searchsorted per upgrade.
        by_freed = np.argsort(-extra[down_row, down_model], kind="stable")
        freed = -extra[down_row, down_model][by_freed]
        loss = -gain[down_row, down_model][by_freed]
        reversed_loss = loss[::-1]
        running_min = np.minimum.accumulate(reversed_loss)
        where_min = np.maximum.accumulate(np.where(reversed_loss == running_min, np.arange(len(loss)), 0))
        suffix_best = running_min[::-1]
        suffix_arg = (len(loss) - 1 - where_min)[::-1]
        need = extra[up_row, up_model] - slack
        at = np.searchsorted(freed, need, side="left")
        ok = at < len(freed)
        at = np.minimum(at, len(freed) - 1)
        partner = by_freed[suffix_arg[at]]
        ok &= down_row[partner] != up_row
        net = np.where(ok, gain[up_row, up_model] - suffix_best[at], -np.inf)
        k = int(np.argmax(net))
        if not net[k] > 1e-12:
            break
        choice = choice.copy()
        choice[up_row[k]] = up_model[k]
        choice[down_row[partner[k]]] = down_model[partner[k]]
        choice = _fill_upward(q, c, choice, budget_usd, choice)
    return choice


def _total(values: np.ndarray, choice: np.ndarray) -> float:
    return float(values[np.arange(len(values)), choice].sum(dtype=np.float64))


def _result(q, c, choice, budget_usd, cheapest, quality_per_usd) -> BudgetAssignment:
    """The assignment with exact totals (math.fsum). Running sums in float can drift by an ulp: should the
    exact total exceed the budget, rows move to their cheapest model until it fits."""
    rows = np.arange(len(q))
    total_cost = math.fsum(c[rows, choice].tolist())
    while total_cost > budget_usd:
        r = int(np.argmax(c[rows, choice] - c[rows, cheapest]))
        choice[r] = cheapest[r]
        total_cost = math.fsum(c[rows, choice].tolist())
    return BudgetAssignment(choice, total_cost, math.fsum(q[rows, choice].tolist()), float(quality_per_usd))
