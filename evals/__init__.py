"""Measuring routing quality: accuracy/cost frontiers against baselines (harness.py runs them, from
routers.py, sweeps.py, frontier.py, references.py, pool.py and report.py), informed ceilings (ceiling.py),
the add-model experiment (add_model.py), out-of-fold frontiers on train (oof.py) and the recipe chosen by
them (recipe.py); provenance.py stamps results with git revision and machine. On top of training/ and
selector/ (whose policies the frontiers sweep)."""
