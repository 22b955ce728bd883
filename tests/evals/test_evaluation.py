"""The routing evaluation harness: frontier metrics on hand-computable cases, and `routoo eval` end to end."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.main import main as routoo
from training.data import load_dataset
from evals.config import EvalConfig
from evals.frontier import area_under_frontier, area_under_points, frontier_hull, gap_recovered
from evals.pool import evaluate_pool
from evals.routers import RouterPredictions, knn_quality
from evals.sweeps import tradeoff_breakpoints, tradeoff_lambdas
from tests.support.datasets import write_dataset

# Four prompts, a cheap model ($1 a prompt) right on 0 and 1, a strong one ($10) right on 0, 1 and 2;
# nobody answers prompt 3. The strong model is the best single one: accuracy 3/4 for $40.
QUALITY = np.array([[1, 1], [1, 1], [0, 1], [0, 0]], dtype=float)
COST = np.array([[1, 10]] * 4, dtype=float)
# Oracle: cheap on 0, 1 and 3, strong on 2 -> ($13, 3/4); at a high price of cost all cheap -> ($4, 1/2).
# Frontier in cost / $40: (0, 0) -> (0.1, 0.5) -> (0.325, 0.75), flat after.
ORACLE_AUC = 0.1 * 0.5 / 2 + (0.5 + 0.75) / 2 * 0.225 + 0.75 * (1 - 0.325)
# No-prompt (any fixed mix of the two): (0, 0) -> (0.1, 0.5) -> (1, 0.75).
NO_PROMPT_AUC = 0.1 * 0.5 / 2 + (0.5 + 0.75) / 2 * 0.9


def _pool(routers, config=EvalConfig(ref_model="cheap")):
    oracle = RouterPredictions("oracle", QUALITY, COST)
    return evaluate_pool("test", ["cheap", "strong"], routers, oracle, QUALITY, COST, config,
                         no_prompt="no-prompt", show_progress=False)


def _no_prompt():
    return RouterPredictions("no-prompt", np.tile([0.5, 0.75], (4, 1)), COST)


def test_hull_of_one_point_starts_at_the_origin_and_stays_flat():
    hx, hy = frontier_hull(np.array([0.5]), np.array([0.8]))
    np.testing.assert_allclose(hx, [0, 0.5])
    np.testing.assert_allclose(hy, [0, 0.8])
    assert area_under_frontier(np.array([0.5]), np.array([0.8])) == pytest.approx(0.5 * 0.8 / 2 + 0.5 * 0.8)
    # Without mixing, nothing is reachable below the point's cost.
    assert area_under_points(np.array([0.5]), np.array([0.8])) == pytest.approx(0.5 * 0.8)


def test_hull_drops_points_under_a_chord_and_dearer_worse_points():
    x = np.array([0.1, 0.5, 0.9, 0.95])
    y = np.array([0.5, 0.55, 0.9, 0.7])        # (0.5, 0.55) is under the chord, (0.95, 0.7) is dominated
    hx, hy = frontier_hull(x, y)
    np.testing.assert_allclose(hx, [0, 0.1, 0.9])
    np.testing.assert_allclose(hy, [0, 0.5, 0.9])


def test_auc_beyond_one_is_cut_at_the_reference_cost():
    # A straight line from the origin to (2, 1): accuracy 0.5 at x = 1.
    assert area_under_frontier(np.array([2.0]), np.array([1.0])) == pytest.approx(0.25)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.001, 2.0), st.floats(0.0, 1.0)), min_size=1, max_size=25))
def test_frontier_is_monotone_concave_and_covers_every_point(points):
    x, y = np.array(points).T
    hx, hy = frontier_hull(x, y)
    assert (np.diff(hx) > 0).all() and (np.diff(hy) >= -1e-12).all()          # non-decreasing
    slopes = np.diff(hy) / np.diff(hx)
    assert (np.diff(slopes) <= 1e-9).all()                                   # concave
    assert (np.interp(x, hx, hy, right=hy[-1]) >= y - 1e-9).all()           # on or above every point
    assert 0 <= area_under_points(x, y) <= area_under_frontier(x, y) + 1e-12 <= 1 + 1e-12


def test_oracle_and_no_prompt_aucs_by_hand():
    pool = _pool([_no_prompt()])
    assert pool.best.name == "strong" and pool.best.cost_usd == 40
    assert pool.summary["oracle / tradeoff"]["auc"] == pytest.approx(ORACLE_AUC)
    assert pool.summary["no-prompt / tradeoff"]["auc"] == pytest.approx(NO_PROMPT_AUC)


def test_gap_recovered_is_one_for_the_oracle_and_zero_without_the_prompt():
    perfect = RouterPredictions("knows-the-answers", QUALITY, COST)
    pool = _pool([perfect, _no_prompt()])
    assert pool.summary["knows-the-answers / tradeoff"]["gap_recovered"] == pytest.approx(1.0)
    assert pool.summary["oracle / tradeoff"]["gap_recovered"] == pytest.approx(1.0)
    assert pool.summary["no-prompt / tradeoff"]["gap_recovered"] == pytest.approx(0.0)
    assert gap_recovered(0.7, 0.6, 0.8) == pytest.approx(0.5)
    # The perfect router reaches the best model's accuracy at 13/40 of its cost.
    assert pool.summary["knows-the-answers / tradeoff"]["reach_best_cost_fraction"] == pytest.approx(13 / 40)
    # ... and reaches the cheap reference's accuracy (1/2) at its cost: cheap on every prompt.
    assert pool.summary["knows-the-answers / tradeoff"]["reach_ref_cost_fraction"] == pytest.approx(1.0)


def test_random_mixing_runs_from_the_weak_to_the_strong_model():
    pool = _pool([_no_prompt()])
    mix = next(fr for fr in pool.frontiers if fr.router == "random mixing")
    assert (mix.accuracy[0], mix.cost_usd[0]) == (0.5, 4.0)        # all cheap
    assert (mix.accuracy[-1], mix.cost_usd[-1]) == (0.75, 40.0)    # all strong


def test_batch_mode_keeps_the_budget_when_costs_are_known():
    perfect = RouterPredictions("knows-the-answers", QUALITY, COST)
    pool = _pool([perfect, _no_prompt()])
    for row in pool.budget:
        assert row["realised_cost_usd"] <= row["budget_usd"] + 1e-9
    # Half of $40 buys the strong model where it alone is right: every answerable prompt.
    half = next(r for r in pool.budget if r["budget_fraction"] == 0.5)
    assert half["accuracy"] == pytest.approx(0.75)


def test_unlabelled_cells_are_never_chosen():
    quality = QUALITY.copy()
    quality[2, 1] = np.nan                      # the strong model's answer to prompt 2 is unknown
    cost = COST.copy()
    cost[2, 1] = np.nan
    oracle = RouterPredictions("oracle", np.nan_to_num(quality), np.nan_to_num(cost))
    keen = RouterPredictions("always-strong", np.tile([0.0, 1.0], (4, 1)), COST)
    pool = evaluate_pool("t", ["cheap", "strong"], [keen, _no_prompt()], oracle, quality, cost,
                         EvalConfig(ref_model=None), no_prompt="no-prompt", show_progress=False)
    assert np.isfinite(pool.frontiers[0].accuracy).all()
    assert any("ineligible" in note for note in pool.notes)
    assert "only 3 of 4 prompts have 2 or more labelled models to choose between" in " ".join(pool.notes)
    # One labelled model a prompt (router logs): the figures measure nothing about routing, and say so.
    quality = np.array([[1.0, np.nan], [np.nan, 0.0], [0.0, np.nan], [np.nan, 1.0]])
    cost = np.where(np.isnan(quality), np.nan, COST)
    oracle = RouterPredictions("oracle", np.nan_to_num(quality), np.nan_to_num(cost))
    pool = evaluate_pool("t", ["cheap", "strong"], [keen, _no_prompt()], oracle, quality, cost,
                         EvalConfig(ref_model=None), no_prompt="no-prompt", show_progress=False)
    assert any(note.endswith("nothing here measures routing") for note in pool.notes)


def test_where_every_model_has_gaps_the_best_labelled_ones_are_references():
    quality = QUALITY.copy()
    quality[1, 0] = quality[3, 1] = np.nan                # each model labelled on 3 of the 4 prompts
    oracle = RouterPredictions("oracle", np.nan_to_num(quality), COST)
    pool = evaluate_pool("test", ["cheap", "strong"], [_no_prompt()], oracle, quality, COST,
                         EvalConfig(ref_model=None), no_prompt="no-prompt", show_progress=False)
    assert pool.best.name == "strong" and pool.best.coverage == 0.75
    assert any("no model is labelled on 99%" in note for note in pool.notes)


def test_a_free_fully_labelled_model_does_not_lift_the_bar_for_gappy_paid_ones():
    quality = np.column_stack([QUALITY, [1, 1, 1, 1]]).astype(float)
    quality[1, 0] = quality[3, 1] = np.nan                # the paid models: 3 of 4 prompts each
    cost = np.column_stack([COST, [0, 0, 0, 0]]).astype(float)
    oracle = RouterPredictions("oracle", np.nan_to_num(quality), cost)
    no_prompt = RouterPredictions("no-prompt", np.tile([0.5, 0.75, 1.0], (4, 1)), cost)
    pool = evaluate_pool("test", ["cheap", "strong", "free"], [no_prompt], oracle, quality, cost,
                         EvalConfig(ref_model="free"), no_prompt="no-prompt", show_progress=False)
    assert pool.best.name == "strong" and pool.ref is None
    assert any("'free' costs $0 here" in note for note in pool.notes)


def test_a_free_model_is_never_the_reference_costs_are_normalised_by():
    cost = np.array([[1, 0]] * 4, dtype=float)            # the strong model costs nothing
    no_prompt = RouterPredictions("no-prompt", np.tile([0.5, 0.75], (4, 1)), cost)
    pool = evaluate_pool("test", ["cheap", "strong"], [no_prompt], RouterPredictions("oracle", QUALITY, cost),
                         QUALITY, cost, EvalConfig(ref_model=None), no_prompt="no-prompt", show_progress=False)
    assert pool.best.name == "cheap"
    assert any("['strong'] cost $0" in note for note in pool.notes)
    # Always taking the free, better model is a point at cost 0 above the reference: the frontier is flat.
    assert pool.summary["no-prompt / tradeoff"]["auc"] == pytest.approx(0.75)


def test_breakpoints_and_lambda_grid_by_hand():
    q, c = np.array([[0.5, 0.9]]), np.array([[1.0, 5.0]])
    np.testing.assert_allclose(tradeoff_breakpoints(q, c, np.ones_like(q, bool)), [0.1])  # 0.4 / 4
    lambdas = tradeoff_lambdas(q, c, np.ones_like(q, bool), 10)
    assert lambdas[0] == 0 and lambdas[-1] > 0.1


def test_knn_with_one_neighbour_copies_its_labels():
    train_x = np.eye(3, dtype=np.float32)
    train_q = np.array([[1, 0], [0, 1], [1, np.nan]], dtype=float)
    test_x = np.array([[0.9, 0.1, 0], [0, 0.2, 0.9]], dtype=np.float32)
    out = knn_quality(train_x, train_q, test_x, 1)
    np.testing.assert_allclose(out[0], [1, 0])
    np.testing.assert_allclose(out[1], [1, 0.5])     # unknown label -> that model's train mean


# --- end to end ------------------------------------------------------------------------------------------

TOPICS = {"math": "integral derivative equation algebra polynomial matrix",
          "law": "court statute plaintiff contract tort jurisdiction",
          "history": "empire dynasty treaty revolution century monarch"}
MODELS = ["mathy", "lawyer", "generalist", "gpt-big"]


def _dataset(folder, n, seed):
    """Topic specialists: `mathy` right on math, `lawyer` on law, `generalist` at 50%, closed `gpt-big` on all
    but 10%; costs grow with length and price."""
    rng = np.random.default_rng(seed)
    prompts, scores, costs = [], [], []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        text = f"Question {i} on {topic}: " + " ".join(rng.choice(TOPICS[topic].split(), 6)) + " ok" * int(rng.integers(0, 30))
        prompts.append({"id": f"q{i}", "text": text, "category": topic})
        scores.append([f"q{i}", int(topic == "math"), int(topic == "law"), int(rng.random() < 0.5),
                       int(rng.random() < 0.9)])
        costs.append([f"q{i}", *(round(p * 1e-6 * len(text), 12) for p in (1, 1.5, 0.5, 20))])
    return write_dataset(folder, prompts, MODELS, scores, costs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from training.fit import TrainConfig, train

    root = tmp_path_factory.mktemp("eval")
    train_dir, test_dir = _dataset(root / "train", 150, 0), _dataset(root / "test", 60, 1)
    artifact, _ = train(load_dataset(train_dir), None, encoder_name="static",
                        config=TrainConfig(hidden=16, folds=2, max_epochs=40, patience=40), show_progress=False)
    artifact.save(root / "artifact")
    return root, train_dir, test_dir


def test_eval_cli_end_to_end(tiny, capsys):
    root, train_dir, test_dir = tiny
    code = routoo(["eval", "--train", str(train_dir), "--test", str(test_dir), "--artifact", str(root / "artifact"),
                   "--ref", "generalist", "--out-json", str(root / "eval.json"), "--plot", str(root / "f.png"),
                   "--skip-tfidf"])
    assert code == 0
    out = capsys.readouterr().out
    assert "== pool: full (4 models" in out and "== pool: open-weights (3 models" in out
    report = json.loads((root / "eval.json").read_text())
    assert set(report["pools"]) == {"full", "open-weights"}
    full = report["pools"]["full"]
    assert full["best_single"]["name"] == "gpt-big" and full["ref"]["name"] == "generalist"
    summary = full["summary"]
    oracle, no_prompt = summary["oracle / tradeoff"], summary["no-prompt (per-model mean) / tradeoff"]
    assert oracle["gap_recovered"] == pytest.approx(1.0) and no_prompt["gap_recovered"] == pytest.approx(0.0)
    # Topic specialists are easy to route: the trained router must recover most of the gap.
    routoo_row = summary["routoo (static) / tradeoff"]
    assert routoo_row["gap_recovered"] > 0.5
    assert all(0 <= row["auc"] <= oracle["auc"] + 1e-9 for row in summary.values())
    assert [r["budget_fraction"] for r in full["budget"]] == [0.25, 0.5, 0.75, 1.0]
    assert "gpt-big" not in report["pools"]["open-weights"]["models"]
    assert (root / "f.png").stat().st_size > 10_000


def test_eval_cli_rejects_an_unknown_pool_model(tiny, capsys):
    root, train_dir, test_dir = tiny
    code = routoo(["eval", "--train", str(train_dir), "--test", str(test_dir), "--artifact", str(root / "artifact"),
                   "--pool", "mathy,ghost", "--skip-tfidf"])
    assert code == 2
    err = capsys.readouterr().err
    assert "ghost" in err and "Traceback" not in err


def test_eval_add_model_cli(tiny, capsys):
    root, train_dir, test_dir = tiny
    code = routoo(["eval-add-model", "--train", str(train_dir), "--test", str(test_dir), "--model", "lawyer",
                   "--artifact", str(root / "artifact"), "--sizes", "10,40", "--repeats", "2",
                   "--out-json", str(root / "add.json")])
    assert code == 0
    result = json.loads((root / "add.json").read_text())
    assert [r["n_labelled"] for r in result["add_model"]] == [10, 40, 150]
    # `lawyer` is right exactly on law prompts: learnable from 40 labels, against the full-data head.
    assert result["add_model"][1]["auroc_mean"] > 0.9 and result["full_training_auroc"] > 0.9


def test_eval_ceiling_cli(tiny, capsys):
    root, train_dir, test_dir = tiny
    code = routoo(["eval-ceiling", "--train", str(train_dir), "--test", str(test_dir), "--artifact",
                   str(root / "artifact"), "--probes", "mathy", "--ref", "", "--out-json", str(root / "ceil.json")])
    assert code == 0
    assert "probes (out of the pool, their outcomes are features): mathy" in capsys.readouterr().out
    report = json.loads((root / "ceil.json").read_text())
    pool = report["pools"]["without probes"]
    assert pool["models"] == ["lawyer", "generalist", "gpt-big"]
    summary = pool["summary"]
    category, probe = summary["told category / tradeoff"], summary["told probes' mean / tradeoff"]
    # The category names the prompts `lawyer` gets right, so that router recovers most of the gap; the math
    # probe's outcome only says "math or not", which cannot tell law from history.
    assert category["gap_recovered"] > 0.5
    assert category["auc"] > probe["auc"] + 0.01
    # The same in the held-out scorer's metric (mean train cost as price, operating points only).
    scorer = report["scorer_metric"]
    assert set(scorer) == {"without probes", "full pool"}
    assert scorer["without probes"]["told category"]["gap"] > 0.5 and scorer["full pool"]["oracle"]["gap"] == 1.0


def test_eval_ceiling_rejects_an_unknown_probe(tiny, capsys):
    root, train_dir, test_dir = tiny
    code = routoo(["eval-ceiling", "--train", str(train_dir), "--test", str(test_dir), "--artifact",
                   str(root / "artifact"), "--probes", "ghost"])
    assert code == 2
    err = capsys.readouterr().err
    assert "ghost" in err and "Traceback" not in err
