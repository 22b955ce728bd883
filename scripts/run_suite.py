"""Runs the generalisation suite (scripts/make_suite.py) and writes one table: Routoo against TF-IDF + LR,
kNN and the told-category router on every set, AUC with bootstrap CIs and gap recovered.

    PYTHONPATH=$PWD .venv/bin/python scripts/make_suite.py --out /tmp/suite
    PYTHONPATH=$PWD .venv/bin/python scripts/run_suite.py --suite /tmp/suite \
        --sets fewshot-5,long-rag,heldout-cats,pool-2,pool-open,train-500,../shared/data/mmlu-pro --out-json docs/suite.json

Per set: `routoo train`'s default recipe (static encoder, --window auto --head auto --lexical auto:
recipe.train_choosing_recipe, which keeps the window, then the head settings, with the best *out-of-fold
train* frontier AUC past a noise margin, then the lexical part where it helps out-of-fold; the test side is
never read to choose them), with the head-only
256 window reported beside it where another one was kept. kNN, TF-IDF + LR and the
told-category router (per-model logistic regression on the category one-hot, as `routoo eval-ceiling`'s)
decide with the kept artifact's predicted costs; every frontier, CI and gap is `routoo eval`'s
(evaluation.evaluate_pool, full pool). Every router is also scored in the held-out scorer's metric
(scorer_metric.py: operating points only, mean train cost as price), the issue's table's. On heldout-cats
the told category is all zeros on the test side (those categories were never in train), so that router is
the no-prompt one there.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from evals.ceiling import category_features
from evals.config import EvalConfig
from evals.harness import choose_knn_k
from evals.pool import evaluate_pool
from evals.prior_shrink import unshrunk
from evals.recipe import HEAD_ONLY, describe_choice, train_choosing_recipe
from evals.routers import RouterPredictions, artifact_predictions, knn_quality, no_prompt_router, oracle_router
from evals.scorer_metric import scorer_aucs
from predictor_service.windows import window_name
from training import baselines
from training.data import load_dataset
from training.folds import FOLD_BY

SETS = ("fewshot-5", "long-rag", "heldout-cats", "pool-2", "pool-open", "train-500")


def run_set(folder: Path, config: EvalConfig, prior_shrink: str = "off", fold_by: str = "prompt") -> dict:
    started = time.perf_counter()
    test_folder = folder / "test" if (folder / "test").is_dir() else folder / "dev"   # mmlu-pro itself: dev
    train_ds, test_ds = load_dataset(folder / "train"), load_dataset(test_folder)
    test_ds = test_ds.select_models(train_ds.model_names)
    names = train_ds.model_names
    trained = time.perf_counter()
    artifact, result = train_choosing_recipe(train_ds, None, lexical="auto", prior_shrink=prior_shrink,
                                             fold_by=fold_by, show_progress=False)
    train_seconds = time.perf_counter() - trained
    choice, candidates = result["window_choice"], result["candidate_artifacts"]
    kept = choice["kept"]
    print("\n".join(f"  {folder.name}: {line}" for line in describe_choice(result)), flush=True)
    quality, cost, test_x = artifact_predictions(artifact, test_ds.texts)
    _, train_cost_pred, train_x = artifact_predictions(artifact, train_ds.texts)
    alpha = result.get("prior_shrink", {}).get("alpha", 0.0)
    routers = [RouterPredictions(f"routoo (window {kept}, head {result['head_choice']['kept']}, lexical "
                                 f"{'on' if artifact.lexical is not None else 'off'}, prior shrink {alpha:g}, "
                                 f"chosen by CV)", quality, cost)]
    if alpha > 0:   # the same predictor before the shrink (exact up to the lexical part's int8 rounding)
        before = unshrunk(quality, np.array(result["prior_shrink"]["prior"]), alpha)
        routers.append(RouterPredictions("routoo (prior shrink off)", before, cost))
    head_only = window_name(*HEAD_ONLY)
    if head_only in candidates and head_only != kept:
        q0, _, _ = artifact_predictions(candidates[head_only], test_ds.texts)
        routers.append(RouterPredictions(f"routoo (window {head_only})", q0, cost))
    no_prompt = no_prompt_router(train_ds.quality, train_ds.cost_usd, len(test_ds))
    k, _ = choose_knn_k(train_x, train_ds.quality, train_ds.cost_usd, train_cost_pred, config, names)
    routers += [no_prompt,
                RouterPredictions(f"kNN-{k}", knn_quality(train_x, train_ds.quality, test_x, k), cost),
                RouterPredictions("TF-IDF + LR", baselines.tfidf_logistic(train_ds.texts, train_ds.quality,
                                                                          test_ds.texts), cost),
                RouterPredictions("told category", baselines.per_model_logistic(
                    category_features(train_ds, train_ds), train_ds.quality, category_features(train_ds, test_ds)), cost)]
    res = evaluate_pool(folder.name, names, routers, oracle_router(test_ds.quality, test_ds.cost_usd),
                        test_ds.quality, test_ds.cost_usd, config, no_prompt=no_prompt.name, show_progress=False)
    rows = {name.split(" / ")[0]: {key: row.get(key) for key in ("auc", "auc_ci95", "gap_recovered", "auc_points",
                                                              "gap_recovered_points", "routoo_minus_auc_ci95")}
            for name, row in res.summary.items() if name.endswith("/ tradeoff")}
    scorer = scorer_aucs({r.name.split(" / ")[0]: r.quality for r in routers if r is not no_prompt},
                         train_ds.quality, train_ds.cost_usd, test_ds.quality, test_ds.cost_usd, names, config)
    return {"set": folder.name, "n_train": len(train_ds), "n_test": len(test_ds), "n_models": len(names),
            "window_kept": kept, "window_choice": choice, "head_kept": result["head_choice"]["kept"],
            "head_choice": result["head_choice"], "tfidf_check": result["tfidf_check"],
            "prior_shrink": result.get("prior_shrink"), "routers": rows,
            "scorer_metric": scorer, "train_seconds": round(train_seconds),
            "seconds": round(time.perf_counter() - started)}


# Both tables' router columns, before the no-prompt and oracle references.
_COMPARED = ("routoo", "routoo, no shrink", "routoo (256)", "TF-IDF + LR", "kNN", "told category")


def _column(name: str) -> str:
    return ("routoo" if "chosen by CV" in name else "routoo, no shrink" if "shrink off" in name
            else "routoo (256)" if name.startswith("routoo") else "kNN" if name.startswith("kNN") else name)


def format_table(results: list[dict]) -> str:
    cols = [*_COMPARED, "no-prompt (per-model mean)", "oracle"]
    lines = ["| set (train / test prompts, models) | window, head, lexical part, shrink (CV) | Routoo AUC [95% CI] / gap "
             "| Routoo, no shrink | Routoo, 256 head | TF-IDF + LR | kNN | told category | no-prompt | oracle "
             "| Routoo - TF-IDF [95% CI] |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        by = {}
        for name, row in r["routers"].items():
            by[_column(name)] = row
        cells = []
        for c in cols:
            row = by.get(c)
            if row is None:
                cells.append("= Routoo" if c in ("routoo (256)", "routoo, no shrink") else "-")
            elif c == "routoo":
                lo, hi = row["auc_ci95"]
                cells.append(f"{row['auc']:.4f} [{lo:.4f}, {hi:.4f}] / {row['gap_recovered']:.3f}")
            elif c in ("oracle", "no-prompt (per-model mean)"):
                cells.append(f"{row['auc']:.4f}")
            else:
                cells.append(f"{row['auc']:.4f} / {row['gap_recovered']:.3f}")
        lo, hi = by["TF-IDF + LR"]["routoo_minus_auc_ci95"]
        lexical = "kept" if r["tfidf_check"].get("lexical", {}).get("kept") else "not kept"
        lines.append(f"| {r['set']} ({r['n_train']} / {r['n_test']}, {r['n_models']}) | {r['window_kept']}, "
                     f"{r['head_kept']}, {lexical}, {(r.get('prior_shrink') or {}).get('alpha', 0):g} | "
                     + " | ".join(cells) + f" | [{lo:+.4f}, {hi:+.4f}] |")
    gaps = [(r["routers"][next(n for n in r["routers"] if "chosen by CV" in n)]["auc"]
             - r["routers"]["TF-IDF + LR"]["auc"]) for r in results]
    lines.append(f"\nmean Routoo - TF-IDF AUC over the {len(results)} sets: {np.mean(gaps):+.4f}")
    return "\n".join(lines)


def format_scorer_table(results: list[dict]) -> str:
    """The held-out scorer's metric (operating points, mean train cost as price) and the train-only
    out-of-fold TF-IDF check of `routoo train`."""
    lines = ["| set | Routoo AUC / gap | Routoo, no shrink | Routoo, 256 head | TF-IDF + LR | kNN | told category "
             "| no-prompt | oracle | OOF on train: head - TF-IDF [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    diffs = []
    for r in results:
        by = {_column(n): row for n, row in r["scorer_metric"].items()}
        diffs.append(by["routoo"]["auc"] - by["TF-IDF + LR"]["auc"])
        cells = [f"{by[c]['auc']:.4f} / {by[c]['gap']:.3f}" if c in by else "= Routoo"
                 for c in _COMPARED]
        check = r["tfidf_check"]
        lo, hi = check.get("head_minus_tfidf_ci95", (np.nan, np.nan))
        lines.append(f"| {r['set']} | " + " | ".join(cells) + f" | {by['no-prompt']['auc']:.4f} | "
                     f"{by['oracle']['auc']:.4f} | {check.get('head_minus_tfidf', np.nan):+.4f} "
                     f"[{lo:+.4f}, {hi:+.4f}] |")
    lines.append(f"\nmean Routoo - TF-IDF, scorer's metric, over the {len(results)} sets: {np.mean(diffs):+.4f}")
    return "\n".join(lines)


def run_sets(args) -> list[dict]:
    """Every set of --sets, each written to --out-json as soon as it is done."""
    config = replace(EvalConfig(), bootstrap=args.bootstrap)
    results = []
    for name in [s for s in args.sets.split(",") if s.strip()]:
        folder = Path(name) if Path(name, "train").is_dir() else Path(args.suite) / name   # a path, or a set
        results.append(run_set(folder, config, args.prior_shrink, args.fold_by))
        print(f"{name}: done in {results[-1]['seconds']} s", flush=True)
        if args.out_json:
            Path(args.out_json).write_text(json.dumps(results, indent=1) + "\n")
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", help="folder scripts/make_suite.py wrote")
    ap.add_argument("--tables-from", metavar="JSON",
                    help="print the two tables of an earlier run's --out-json (docs/suite.json) and stop")
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated set names under --suite, or "
                    f"dataset folders with train/ and test/ or dev/ (default {','.join(SETS)})")
    ap.add_argument("--bootstrap", type=int, default=EvalConfig().bootstrap)
    ap.add_argument("--out-json", help="write every figure as JSON")
    ap.add_argument("--prior-shrink", choices=["auto", "off"], default="off",
                    help="routoo train's --prior-shrink (default off, as routoo train's)")
    ap.add_argument("--fold-by", choices=FOLD_BY, default="prompt",
                    help="how the ensemble's folds split the train prompts (training.folds.FOLD_BY): prompt "
                         "(default, routoo train's) or category, a diagnostic of the recipe on new topics")
    args = ap.parse_args()
    if args.tables_from:
        results = json.loads(Path(args.tables_from).read_text())
    elif not args.suite:
        ap.error("--suite is required (or --tables-from)")
    else:
        results = run_sets(args)
    print(format_table(results))
    print(format_scorer_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
