"""Measuring routing quality: accuracy/cost frontiers against baselines (harness.py), informed ceilings
(ceiling.py), out-of-fold frontiers on train (oof.py) and the recipe chosen by them (recipe.py). On top of
training/ and selector/ (whose policies the frontiers sweep)."""
