"""The in-process predictor on the default artifact: its scores, batching, both CPU paths, prompt checks."""

import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor_service.artifact import default_artifact_path
from predictor_service.contract import MAX_PROMPT_BYTES
from predictor_service.predictor import Predictor, PromptError, check_prompt
from tests.support.datasets import TOPICS
from tests.support.predicting import step_by_step


@pytest.fixture(scope="module")
def cpu_predictor():
    """The default artifact on the CPU, loaded once for the tests that only read it."""
    return Predictor.load(default_artifact_path(), device="cpu")


def test_default_artifact_scores_unseen_prompts(cpu_predictor):
    predictor = cpu_predictor
    texts = ["Which planet is largest?\nA. Mars\nB. Jupiter", "Solve x^2 = 4.", "Résumé: ünïcödé ✓"]
    quality, cost = predictor.predict(texts)
    assert quality.shape == cost.shape == (3, len(predictor.model_names))
    assert ((quality > 0) & (quality < 1)).all() and (cost > 0).all()


def test_batching_never_changes_an_answer(cpu_predictor):
    """Triton's dynamic batcher must give each prompt what it gets alone (to fp32 rounding, not 1e-5)."""
    predictor = cpu_predictor
    rng = np.random.default_rng(0)
    words = " ".join(TOPICS.values()).split() + ["What", "is", "the", "value", "of", "A.", "B.", "C.", "(x+1)^2"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 120)))) for _ in range(60)]
    quality, cost = predictor.predict(texts)
    alone = [predictor.predict([t]) for t in texts]
    np.testing.assert_allclose(np.concatenate([q for q, _ in alone]), quality, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([c for _, c in alone]), cost, rtol=3e-6)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from([*string.printable, "the ", "question ", "x" * 101, "[UNK]", "[unk]", "[0, 1]",
                                 "é", "東"]), min_size=1, max_size=200).map("".join))
def test_plain_fast_path_gives_the_step_by_step_answer(cpu_predictor, text):
    """One compiled call per prompt (the serving path; "é" and "東" take the rewrite first) must answer exactly
    what the tokenizer plus the folded predictor answer, and leave a text with an added token to them."""
    predictor = cpu_predictor
    out = np.full((2, 3, len(predictor.model_names)), np.nan, np.float32)
    covered = predictor._plain_path.score(text, out, 1)
    assert covered == (not any(token in text for token in predictor.encoder.added_tokens))
    if covered:
        quality, cost = step_by_step(predictor, [text])
        np.testing.assert_array_equal(out[0, 1], quality[0])
        np.testing.assert_array_equal(out[1, 1], cost[0])
        assert np.isnan(out[:, [0, 2]]).all()          # only its own row is written
    else:
        assert np.isnan(out).all()


def test_a_mixed_batch_takes_both_cpu_paths_and_keeps_each_answer(cpu_predictor):
    predictor = cpu_predictor
    texts = ["Which planet is largest? A. Mars B. Jupiter", "Résumé: ünïcödé ✓", "see [UNK] here", "x" * 500,
             "Solve x^2 = 4 on [0, 3]."]
    quality, cost = predictor.predict(texts)
    expected_quality, expected_cost = step_by_step(predictor, texts)
    np.testing.assert_array_equal(quality, expected_quality)
    np.testing.assert_array_equal(cost, expected_cost)


@pytest.mark.parametrize("text, message", [("", "empty"), ("   \n", "empty"), ("x" * (MAX_PROMPT_BYTES + 1), "over the limit")])
def test_check_prompt_rejects_without_echoing_text(text, message):
    with pytest.raises(PromptError, match=message) as info:
        check_prompt(text)
    assert "xxxx" not in str(info.value)


def test_the_cpu_loop_gathers_the_stored_int8_rows_to_the_decoded_tables_bits(cpu_predictor):
    """The loop reads the artifact's int8 rows and their scales (a 7.5 MB table, not the 60 MB folded one):
    row * scale in fp32 is the decoded table's value, so the same predictor over the fp32 table with scales
    of 1 answers the same bits."""
    from kernels.cpu_static_predictor import FoldedStaticPredictor

    predictor = cpu_predictor
    folded = predictor._folded
    assert folded.rows.dtype == np.int8 and folded.rows.shape == tuple(predictor.encoder.table.shape)
    over_fp32 = FoldedStaticPredictor(predictor.encoder.table, *predictor.weights.as_dict().values(),
                                      predictor.inv_temperature, lexical=predictor.lexical)
    assert over_fp32.rows.dtype == np.float32
    texts = ["Which planet is largest?\nA. Mars\nB. Jupiter", "Résumé: ünïcödé ✓", "x " * 400]
    tokens = predictor.encoder.tokenize(texts)
    args = (tokens.token_ids.numpy(), tokens.offsets.numpy(), np.log1p([len(t) for t in texts]).astype(np.float32))
    for got, expected in zip(folded.predict(*args), over_fp32.predict(*args)):
        np.testing.assert_array_equal(got, expected)
