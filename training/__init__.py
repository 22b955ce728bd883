"""Fitting predictor artifacts: the canonical data set (data.py), the head's training loop and add-model
(fit.py), costs from prices (price_costs.py), quality metrics (metrics.py) and the TF-IDF baseline
(baselines.py). On top of predictor_service/; evals/ and cli/ use it."""
