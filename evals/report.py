"""An evaluation's outputs: the JSON (every figure and frontier point, stamped with where it was made), the
text tables `routoo eval` prints, and the frontier plot."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from evals.frontier import frontier_hull, frontier_value
from evals.pool import PoolResult
from evals.provenance import git_commit, machine_summary, utc_now
from predictor_service.artifact import Artifact
from predictor_service.json_numbers import finite_json
from training.data import RoutingDataset


def pool_json(res: PoolResult) -> dict:
    return {"models": res.models, "n_prompts": res.n_prompts, "notes": res.notes,
            "best_single": asdict(res.best), "ref": asdict(res.ref) if res.ref else None,
            "single_models": [asdict(m) | {"normalised_cost": m.cost_usd / res.best.cost_usd} for m in res.singles],
            "summary": res.summary, "budget": res.budget,
            "frontiers": [fr.to_json(res.best.cost_usd) for fr in res.frontiers]}


def run_meta(artifact: Artifact, train_ds: RoutingDataset, test_ds: RoutingDataset) -> dict:
    return {"date": utc_now(), "git_revision": git_commit(),
            "machine": machine_summary(f"{torch.get_num_threads()} threads"),
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
    figures = finite_json({k: v for k, v in report.items() if not k.startswith("_")})   # NaN -> null
    path.write_text(json.dumps(figures, indent=1, allow_nan=False) + "\n")
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
