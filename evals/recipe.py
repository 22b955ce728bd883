"""The training recipe chosen per data set by train-only cross-validation (`routoo train --window auto`).

Candidates are encoder windows (encoders.TAIL_TOKENS): the first 256 tokens, as every artifact before
windows read, and head + tail windows that also read a long prompt's end, where few-shot templates, RAG
context and chat history put the question. Each candidate is trained by training.train; the one with the
best out-of-fold train frontier AUC (evals/oof.py) is kept, the test split is never read. A windowed
candidate must beat the head-only one by WINDOW_MARGIN, the figure's noise between seeds, to be kept: the
head-only window is the default every other setting was tuned on (docs/evaluation.md).

Where almost no train prompt is longer than the head-only window, every candidate reads the same tokens
and only the head-only one is trained (no extra training time).

train_choosing_recipe adds the head settings (head_search.py: width, regularisation, smoothing) on the
kept window, and measures the kept head against TF-IDF + LR on the same folds.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from training.data import RoutingDataset
from predictor_service.windows import window_name
from evals.oof import oof_frontier

log = logging.getLogger(__name__)

HEAD_ONLY = (256, 0)
# (max_tokens, tail_tokens). Suite CV (docs/evaluation.md, "Generalisation suite"): on fewshot-5 the
# out-of-fold frontier AUC was 0.7387 / 0.7470 / 0.7483 / 0.7432 for 256 / 128+128 / 64+192 / 256+256.
WINDOW_CANDIDATES: tuple[tuple[int, int], ...] = (HEAD_ONLY, (256, 192), (256, 256))
WINDOW_MARGIN = 0.002
# Below this share of train prompts longer than the head-only window, the candidates read the same tokens
# on nearly every prompt and the choice is not made.
MIN_LONG_SHARE = 0.01


def long_share(texts: list[str], tokenizer_json: str, max_tokens: int) -> float:
    """Share of texts with more than max_tokens tokens (the tokenizer without truncation)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_truncation()
    counts = np.array([len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)])
    return float((counts > max_tokens).mean()) if len(counts) else 0.0


def train_choosing_window(train_ds: RoutingDataset, dev_ds: RoutingDataset | None, *,
                          candidates: tuple[tuple[int, int], ...] = WINDOW_CANDIDATES, **train_kwargs):
    """training.train for each window candidate; returns (artifact, result) of the kept one, with the choice
    and every candidate's out-of-fold figures in manifest.training["window_choice"] and result["window_choice"]."""
    from predictor_service.artifact import static_encoder_from
    from training.fit import train

    if HEAD_ONLY not in candidates:
        raise ValueError(f"the window candidates must include the head-only {window_name(*HEAD_ONLY)}")
    share = long_share(train_ds.texts, static_encoder_from(train_kwargs.get("static_table")).tokenizer_json,
                       HEAD_ONLY[0] - HEAD_ONLY[1])
    tried = [HEAD_ONLY] if share < MIN_LONG_SHARE else list(candidates)
    figures, trained = {}, {}
    for max_tokens, tail in tried:
        artifact, result = train(train_ds, dev_ds, max_tokens=max_tokens, tail_tokens=tail, **train_kwargs)
        oof = oof_frontier(result["oof_quality"], train_ds.quality, train_ds.cost_usd, train_ds.model_names)
        name = window_name(max_tokens, tail)
        figures[name] = {"oof_frontier_auc": round(oof["auc"], 5), "oof_gap_recovered": round(oof["gap_recovered"], 4),
                         "oof_auroc": round(result["oof"]["auroc_mean"], 5),
                         "oof_log_loss": round(result["oof"]["log_loss"], 5)}
        trained[name] = (artifact, result)
        log.info("window %s: out-of-fold frontier AUC %.4f", name, oof["auc"])
    head = window_name(*HEAD_ONLY)
    best = max(figures, key=lambda n: figures[n]["oof_frontier_auc"])
    if figures[best]["oof_frontier_auc"] < figures[head]["oof_frontier_auc"] + WINDOW_MARGIN:
        best = head
    choice = {"by": "out-of-fold train frontier AUC (tradeoff policy, mean train costs)",
              "margin_over_head_only": WINDOW_MARGIN, "long_prompt_share": round(share, 4),
              "candidates": figures, "kept": best}
    if len(tried) == 1:
        choice["note"] = (f"{share:.1%} of train prompts are longer than {HEAD_ONLY[0]} tokens (< "
                          f"{MIN_LONG_SHARE:.0%}): windows read the same tokens, only {head} was trained")
    artifact, result = trained[best]
    artifact.manifest.training["window_choice"] = choice
    result["window_choice"] = choice
    result["candidate_artifacts"] = {name: a for name, (a, _) in trained.items()}
    return artifact, result


def train_choosing_recipe(train_ds: RoutingDataset, dev_ds: RoutingDataset | None, *, window="auto",
                          head: str = "auto", tfidf_check: bool = True, lexical: str = "off",
                          prior_shrink: str = "off", config=None, **train_kwargs):
    """The window (train_choosing_window, or the fixed (max_tokens, tail_tokens) `window`), then the head
    settings on it (head_search: every candidate for "auto", else the named one), then the kept head's
    out-of-fold frontier AUC against TF-IDF + LR's on the same folds. Returns (artifact, result); the
    choices are in manifest.training ("window_choice", "head_choice", "tfidf_check") and in result, which
    also holds "oof_fold" and "tfidf_oof_quality" (None when skipped). Then, unless `lexical` is "off", the
    lexical part on the kept head (evals/lexical.py: "auto" keeps it only where it helps out-of-fold), whose
    served out-of-fold figure the TF-IDF check compares too (tfidf_check["lexical"]). Last, unless
    `prior_shrink` is "off", the shrink toward each model's train mean (evals/prior_shrink.py, one-SE rule)."""
    from evals.head_search import DEFAULT_HEAD, HEAD_CANDIDATES, HEAD_SEEDS, head_candidate
    from training.fit import TrainConfig, train
    from training.folds import train_folds

    base = config or TrainConfig()
    if head != "auto":
        head_candidate(head)                        # an unknown name fails before any training
    if window == "auto":
        artifact, result = train_choosing_window(train_ds, dev_ds, config=base, **train_kwargs)
        window = (artifact.manifest.max_tokens, artifact.manifest.tail_tokens)
    elif head in ("auto", DEFAULT_HEAD.name):
        artifact, result = train(train_ds, dev_ds, config=base, max_tokens=window[0], tail_tokens=window[1],
                                 **train_kwargs)
    else:
        artifact, result = None, {}
    runs = {} if artifact is None else {(DEFAULT_HEAD.name, base.seed): (artifact, result)}
    def fit(candidate, seed):
        if (candidate.name, seed) not in runs:
            runs[(candidate.name, seed)] = train(train_ds, dev_ds, config=replace(candidate.config(base), seed=seed),
                                                 max_tokens=window[0], tail_tokens=window[1], **train_kwargs)
            log.info("head %s, seed %d: trained", candidate.name, seed)

    if head != "auto":
        fit(head_candidate(head), base.seed)
    else:
        for candidate in HEAD_CANDIDATES:
            fit(candidate, base.seed)
        # Successive halving: a challenger behind the default on the first seed is not trained again (on
        # mmlu-pro/train two of three, 2 of 10 trainings saved); the others get every seed, the default too.
        first = {c.name: oof_frontier(runs[(c.name, base.seed)][1]["oof_quality"], train_ds.quality,
                                      train_ds.cost_usd, train_ds.model_names)["auc"] for c in HEAD_CANDIDATES}
        ahead = [c for c in HEAD_CANDIDATES if c is not DEFAULT_HEAD and first[c.name] > first[DEFAULT_HEAD.name]]
        for candidate in [DEFAULT_HEAD, *ahead] if ahead else []:
            for i in range(1, HEAD_SEEDS):
                fit(candidate, base.seed + i)
    if head == "auto":
        choice = _compare_heads(train_ds, runs, base)
    else:
        candidate = head_candidate(head)
        choice = {"by": "fixed by --head", "kept": head, "candidates": {head: {"config": candidate.describe(base)}}}
    kept_artifact, kept_result = runs[(choice["kept"], base.seed)]
    fold = train_folds(train_ds, kept_artifact.manifest.training)
    check, tfidf_oof = (_tfidf_check(train_ds, kept_result["oof_quality"], fold) if tfidf_check
                        else ({"skipped": "--skip-tfidf"}, None))
    training = kept_artifact.manifest.training
    training["window_choice"] = result.get("window_choice", {"by": "fixed by --window",
                                                             "kept": window_name(*window)})
    training["head_choice"], training["tfidf_check"] = choice, check
    kept_result.update(window_choice=training["window_choice"], head_choice=choice, tfidf_check=check,
                       oof_fold=fold, tfidf_oof_quality=tfidf_oof,
                       candidate_artifacts=result.get("candidate_artifacts", {}))
    if lexical != "off":
        from evals.lexical import attach_lexical

        record = attach_lexical(kept_artifact, kept_result, train_ds, dev_ds, mode=lexical)
        if "skipped" not in check and "not_applicable" not in record:
            served = record["kept_after_temperature"] if record["kept"] else record["candidates"]["head only"]
            check["lexical"] = {"kept": record["kept"], **_versus_tfidf(served["oof_frontier_auc"], check)}
    if prior_shrink != "off":
        from evals.prior_shrink import attach_prior_shrink

        record = attach_prior_shrink(kept_artifact, kept_result, train_ds, dev_ds, mode=prior_shrink)
        if "skipped" not in check and record["alpha"] > 0:
            # TF-IDF's out-of-fold AUC decides with mean train costs: compare like with like
            served = record["candidates"][f"{record['alpha']:g}"]["deciding with mean train cost"]
            check["prior_shrink"] = {"alpha": record["alpha"], **_versus_tfidf(served, check)}
    return kept_artifact, kept_result


def _versus_tfidf(served_auc: float, check: dict) -> dict:
    """The served predictor's out-of-fold frontier AUC against TF-IDF + LR's in the same check."""
    margin = served_auc - check["tfidf_oof_frontier_auc"]
    return {"served_oof_frontier_auc": served_auc, "served_minus_tfidf": round(margin, 5),
            "served_loses_to_tfidf": bool(margin < 0)}


def _compare_heads(train_ds: RoutingDataset, runs: dict, base) -> dict:
    from evals.head_search import (BOOTSTRAP, HEAD_CANDIDATES, HEAD_CONFIDENCE, HEAD_MARGIN,
                                               HEAD_SEEDS, choose_head)
    from evals.oof import oof_comparison

    order = list(runs)
    res = oof_comparison({f"{n}@{s}": runs[(n, s)][1]["oof_quality"] for n, s in order}, train_ds.quality,
                         train_ds.cost_usd, train_ds.model_names, n_boot=BOOTSTRAP, seed=base.seed)
    aucs = {k: res["auc"][f"{k[0]}@{k[1]}"] for k in order}
    choice = choose_head(aucs, res["boot"], order)
    for c in HEAD_CANDIDATES:
        row = choice["candidates"][c.name]
        picks = [runs[k][1] for k in order if k[0] == c.name]
        row.update(config=c.describe(base),
                   oof_gap_recovered=round(float(np.mean([res["gap_recovered"][f"{k[0]}@{k[1]}"]
                                                          for k in order if k[0] == c.name])), 4),
                   oof_auroc=round(float(np.mean([r["oof"]["auroc_mean"] for r in picks])), 5),
                   oof_log_loss=round(float(np.mean([r["oof"]["log_loss"] for r in picks])), 5))
    return {"by": f"out-of-fold train frontier AUC, mean of {HEAD_SEEDS} seeds (each its own folds)",
            "margin_over_default": HEAD_MARGIN, "bootstrap_share_needed": HEAD_CONFIDENCE, **choice}


def _tfidf_check(train_ds: RoutingDataset, head_oof: np.ndarray, fold: np.ndarray) -> tuple[dict, np.ndarray]:
    """The kept head against TF-IDF + LR out-of-fold on the same folds (paired bootstrap)."""
    from training.baselines import tfidf_logistic_oof
    from evals.head_search import BOOTSTRAP
    from evals.oof import oof_comparison, paired_difference

    tfidf_oof = tfidf_logistic_oof(train_ds.texts, train_ds.quality, fold)
    res = oof_comparison({"head": head_oof, "tfidf": tfidf_oof}, train_ds.quality, train_ds.cost_usd,
                         train_ds.model_names, n_boot=BOOTSTRAP)
    margin = res["auc"]["head"] - res["auc"]["tfidf"]
    check = {"by": "out-of-fold train frontier AUC on the kept head's folds",
             "head_oof_frontier_auc": round(res["auc"]["head"], 5),
             "tfidf_oof_frontier_auc": round(res["auc"]["tfidf"], 5),
             "head_minus_tfidf": round(margin, 5),
             "head_minus_tfidf_ci95": paired_difference(res["boot"][:, 0], res["boot"][:, 1])[0],
             "head_loses_to_tfidf": bool(margin < 0),
             # The lexical stage (hashed n-gram weights on the head) is the remedy; it sets this when run.
             "lexical": None}
    return check, tfidf_oof


def describe_choice(result: dict) -> list[str]:
    """Lines for `routoo train`'s stdout: the window and head choices with their out-of-fold figures, and
    the TF-IDF check, with a warning where the head loses to it."""
    from evals.head_search import DEFAULT_HEAD

    lines = []
    choice = result["window_choice"]
    lines.append(f"encoder window: {choice['kept']}, chosen by {choice['by']}"
                 + (f"; {choice['note']}" if "note" in choice else ""))
    for name, row in choice.get("candidates", {}).items():
        lines.append(f"  window {name:>7}: out-of-fold frontier AUC {row['oof_frontier_auc']:.4f}, gap recovered "
                     f"{row['oof_gap_recovered']:.3f}, AUROC {row['oof_auroc']:.4f}, "
                     f"log loss {row['oof_log_loss']:.4f}")
    choice = result["head_choice"]
    rule = ""
    if "margin_over_default" in choice:
        rule = (f"; a challenger needs +{choice['margin_over_default']} and the lead on "
                f"{choice['bootstrap_share_needed']:.0%} of bootstrap resamples")
    lines.append(f"head: {choice['kept']} ({choice['candidates'][choice['kept']]['config']}), "
                 f"chosen by {choice['by']}{rule}")
    for name, row in choice["candidates"].items():
        if "oof_frontier_auc" in row:
            lo, hi = row["minus_default_ci95"]
            versus = ("" if name == DEFAULT_HEAD.name else
                      f" ({row['minus_default']:+.4f} vs default [{lo:+.4f}, {hi:+.4f}], ahead on "
                      f"{row['ahead_of_default_share']:.1%})")
            lines.append(f"  head {name:>18}: out-of-fold frontier AUC {row['oof_frontier_auc']:.4f}{versus}, "
                         f"gap {row['oof_gap_recovered']:.3f}, AUROC {row['oof_auroc']:.4f}, "
                         f"log loss {row['oof_log_loss']:.4f}, {row['seeds']} seed(s)  [{row['config']}]")
    check = result["tfidf_check"]
    if "skipped" in check:
        lines.append(f"TF-IDF + LR out-of-fold check: skipped ({check['skipped']})")
    else:
        lo, hi = check["head_minus_tfidf_ci95"]
        lines.append(f"TF-IDF + LR out-of-fold frontier AUC {check['tfidf_oof_frontier_auc']:.4f} against the head's "
                     f"{check['head_oof_frontier_auc']:.4f} (head - TF-IDF {check['head_minus_tfidf']:+.4f} "
                     f"[{lo:+.4f}, {hi:+.4f}], same folds)")
    if "lexical_choice" in result:
        from evals.lexical import describe

        lines += describe(result["lexical_choice"])
    lexical, shrink = check.get("lexical"), check.get("prior_shrink")
    if lexical is not None:
        lines += _served_lines(f"head{' + lexical part' if lexical['kept'] else ''}", lexical, check)
    elif "skipped" not in check and check["head_loses_to_tfidf"]:
        lines.append("WARNING: the head loses to its own TF-IDF + LR baseline out-of-fold on this data; "
                     "the lexical part (--lexical auto) is the remedy (manifest training.tfidf_check)")
    if "prior_shrink" in result:
        from evals.prior_shrink import describe as describe_shrink

        lines += describe_shrink(result["prior_shrink"])
    if shrink is not None:
        lines += _served_lines(f"with the prior shrink {shrink['alpha']:g}", shrink, check)
    return lines


def _served_lines(label: str, served: dict, check: dict) -> list[str]:
    lines = [f"served predictor ({label}) out-of-fold frontier AUC {served['served_oof_frontier_auc']:.4f}, "
             f"TF-IDF + LR {check['tfidf_oof_frontier_auc']:.4f} ({served['served_minus_tfidf']:+.4f})"]
    if served["served_loses_to_tfidf"]:
        lines.append(f"WARNING: the served predictor ({label}) loses to its own TF-IDF + LR baseline out-of-fold "
                     "on this data (manifest training.tfidf_check)")
    return lines
