"""The training recipe chosen per data set by train-only cross-validation (`routoo train --window auto`).

Candidates are encoder windows (encoders.TAIL_TOKENS): the first 256 tokens, as every artifact before
windows read, and head + tail windows that also read a long prompt's end, where few-shot templates, RAG
context and chat history put the question. Each candidate is trained by training.train; the one with the
best out-of-fold train frontier AUC (oof_routing) is kept, the test split is never read. A windowed
candidate must beat the head-only one by WINDOW_MARGIN, the figure's noise between seeds, to be kept: the
head-only window is the default every other setting was tuned on (docs/evaluation.md).

Where almost no train prompt is longer than the head-only window, every candidate reads the same tokens
and only the head-only one is trained (no extra training time).
"""

from __future__ import annotations

import logging

import numpy as np

from training.data import RoutingDataset
from predictor_service.encoders import window_name
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
