"""Baseline quality predictors that every trained head is measured against in the same run."""

from __future__ import annotations

import numpy as np


def per_model_rate(train_quality: np.ndarray) -> np.ndarray:
    """(n_models,): each model's mean known train label; 0.5 (no information) for a model with none."""
    return np.nan_to_num(np.nanmean(train_quality, axis=0), nan=0.5)


def per_model_mean(train_quality: np.ndarray, n_prompts: int) -> np.ndarray:
    """(n_prompts, n_models): each model's train accuracy, whatever the prompt (no prompt information)."""
    means = per_model_rate(train_quality)
    return np.broadcast_to(means, (n_prompts, len(means))).astype(np.float32)


def per_model_logistic(x_train, train_quality: np.ndarray, x_test, *, c: float = 1.0) -> np.ndarray:
    """(n_test, n_models): one L2 logistic regression per model on the given features (dense or sparse),
    fitted on that model's labelled train prompts; a model with one class only predicts its rate."""
    from sklearn.linear_model import LogisticRegression

    out = np.empty((x_test.shape[0], train_quality.shape[1]), dtype=np.float32)
    for m in range(train_quality.shape[1]):
        known = ~np.isnan(train_quality[:, m])
        y = train_quality[known, m] >= 0.5
        if y.all() or not y.any():
            out[:, m] = float(y.mean()) if len(y) else 0.5
            continue
        model = LogisticRegression(C=c, max_iter=1000)
        model.fit(x_train[known], y)
        out[:, m] = model.predict_proba(x_test)[:, 1]
    return out


def tfidf_logistic(train_texts: list[str], train_quality: np.ndarray, test_texts: list[str], *,
                   max_features: int = 50_000, c: float = 1.0) -> np.ndarray:
    """(n_test, n_models): one L2 logistic regression per model on word 1-2-gram TF-IDF features."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(max_features=max_features, ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    x_train = vectorizer.fit_transform(train_texts)
    return per_model_logistic(x_train, train_quality, vectorizer.transform(test_texts), c=c)


def tfidf_logistic_oof(texts: list[str], quality: np.ndarray, fold: np.ndarray, **kwargs) -> np.ndarray:
    """(n, n_models) out-of-fold TF-IDF + LR qualities: each fold scored by tfidf_logistic fitted on the
    others (vocabulary included), so a head's out-of-fold predictions on the same folds meet their own
    baseline on equal terms (recipe.py). ~50 s for mmlu-pro/train's 7,173 x 32 on 2 cores."""
    out = np.empty(quality.shape, dtype=np.float32)
    for k in np.unique(fold):
        fit, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        out[held] = tfidf_logistic([texts[i] for i in fit], quality[fit], [texts[i] for i in held], **kwargs)
    return out
