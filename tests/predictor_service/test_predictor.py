"""The in-process predictor: encoders, training, artifacts, add-model and the CLI, on small data."""

import csv
import json
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor_service.artifact import Artifact, ArtifactError, default_artifact_path, static_encoder_from
from cli.main import main as routoo
from training.data import read_prompts
from predictor_service.encoders import MiniLMEncoder, StaticEncoder
from predictor_service.contract import MAX_PROMPT_BYTES
from training.metrics import auroc_per_model
from predictor_service.predictor import Predictor, PromptError, check_prompt
from training.price_costs import input_tokens, typical_output_tokens
from training.fit import add_model
from tests.support.datasets import TOPICS, synthetic_dataset


def test_static_encoder_is_deterministic_and_normalised():
    encoder = static_encoder_from()
    texts = ["What is 2 + 2?", "Explain the tort of negligence.", "x"]
    first, second = encoder.encode(texts), encoder.encode(list(reversed(texts)))[::-1]
    np.testing.assert_allclose(first, second, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert first.shape == (3, 256)


def test_minilm_encoder_loads_offline_and_pools(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = MiniLMEncoder(max_tokens=32)
    emb = encoder.encode(["a cat sits on the mat", "a kitten is on the rug", "quarterly tax filing"])
    assert emb.shape == (3, 384)
    similar, unrelated = emb[0] @ emb[1], emb[0] @ emb[2]
    assert similar > unrelated + 0.2


def test_minilm_batches_give_each_prompt_its_own_embedding():
    """Length-sorted sub-batches under the token budget, padding masked: a batch's rows equal the prompts
    encoded one at a time, in the caller's order."""
    encoder = MiniLMEncoder(max_tokens=64)
    texts = ["short", "word " * 60, "a medium length question about torts and contracts", "x y", "z " * 20]
    encoder.token_budget = 96    # several sub-batches of different widths
    batched = encoder.encode(texts)
    single = np.concatenate([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=2e-5)


def test_training_learns_which_model_knows_which_topic(trained, synthetic):
    artifact, result = trained
    _, dev_ds = synthetic
    auroc = auroc_per_model(dev_ds.quality, _predict(artifact, dev_ds.texts)[0])
    assert auroc[0] > 0.95 and auroc[1] > 0.95         # the learnable models
    assert result["head"]["log_loss"] < 0.6
    assert artifact.manifest.model_names == ["math_whiz", "lawyer", "coin"]
    assert artifact.manifest.training["train_digest"] == synthetic[0].digest


def test_expected_cost_follows_length_and_price(trained):
    artifact, _ = trained
    _, cost = _predict(artifact, ["short integral?", "long integral? " + "detail " * 38])
    assert (cost[1] > cost[0]).all()                     # longer prompt costs more for every model
    assert cost[0, 1] > cost[0, 0] > cost[0, 2]          # price order of the pool


def _predict(artifact, texts):
    predictor = Predictor(artifact, artifact.load_encoder(), device="cpu")
    return predictor.predict(texts)


def test_artifact_round_trip(trained, tmp_path):
    artifact, _ = trained
    artifact.save(tmp_path / "a")
    loaded = Artifact.load(tmp_path / "a")
    assert loaded.manifest == artifact.manifest
    texts = ["integral of x", "court ruling on contract"]
    np.testing.assert_allclose(_predict(loaded, texts)[0], _predict(artifact, texts)[0], rtol=0, atol=0)


def test_bad_artifacts_are_named(tmp_path, trained):
    with pytest.raises(ArtifactError, match="not a Routoo artifact"):
        Artifact.load(tmp_path)
    artifact, _ = trained
    artifact.save(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["model_names"].append("ghost")
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="disagree with the manifest"):
        Artifact.load(tmp_path / "a")


def test_add_model_keeps_the_others_and_learns_the_new_one(trained, synthetic):
    artifact, _ = trained
    train_ds, dev_ds = synthetic
    base = Artifact(artifact.manifest, artifact.weights, static_encoder=artifact.static_encoder)
    # Fit `lawyer` again under a new name from its labels alone.
    j = train_ds.model_names.index("lawyer")
    grown = add_model(base, "lawyer2", [1.0, 2.0], train_ds.texts, train_ds.quality[:, j], train_ds.cost_usd[:, j])
    assert grown.manifest.model_names[-1] == "lawyer2"
    for name in ("w1", "b1", "quality_emb", "cost_emb"):
        old, new = getattr(artifact.weights, name), getattr(grown.weights, name)
        np.testing.assert_array_equal(new[: old.shape[0]] if name.endswith("emb") else new, old)
    quality, _ = _predict(grown, dev_ds.texts)
    assert auroc_per_model(dev_ds.quality[:, [j]], quality[:, [-1]])[0] > 0.95
    with pytest.raises(ValueError, match="already in the pool"):
        add_model(grown, "lawyer2", [1.0, 2.0], train_ds.texts, train_ds.quality[:, j], train_ds.cost_usd[:, j])


def test_add_model_without_costs_prices_it_instead_of_calling_it_free(trained, synthetic):
    artifact, _ = trained
    train_ds, dev_ds = synthetic
    j = train_ds.model_names.index("lawyer")
    unknown = np.full(len(train_ds), np.nan)
    grown = add_model(artifact, "priced", [1.0, 2.0], train_ds.texts, train_ds.quality[:, j], unknown)
    assert grown.manifest.training["added_models"][-1]["costs_from_prices"] is True
    _, cost = _predict(grown, dev_ds.texts)
    pool = cost[:, :-1]
    # The pool's predicted costs imply so many output tokens a prompt; priced like that, the new model at
    # (1, 2) USD per Mtok costs about what a pool model at the same prices would, and never ~0.
    tokens_out = typical_output_tokens(dev_ds.texts, pool, artifact.manifest.model_prices)
    expected = (input_tokens(dev_ds.texts) * 1.0 + tokens_out * 2.0) / 1e6
    assert 0.7 < cost[:, -1].mean() / expected.mean() < 1.4
    with pytest.raises(ValueError, match="no known cost and no prices"):
        add_model(artifact, "unpriced", [None, None], train_ds.texts, train_ds.quality[:, j], unknown)


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


def _step_by_step(predictor, texts):
    """The CPU path without the fused call: the encoder's tokenizer, then the folded predictor."""
    from predictor_service.head import log_lengths_numpy

    tokens = predictor.encoder.tokenize(texts)
    return predictor._folded.predict(tokens.token_ids.numpy(), tokens.offsets.numpy(), log_lengths_numpy(texts))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from([*string.printable, "the ", "question ", "x" * 101, "[UNK]", "[unk]", "[0, 1]",
                                 "é", "東"]), min_size=1, max_size=200).map("".join))
def test_plain_fast_path_gives_the_step_by_step_answer(cpu_predictor, text):
    """One compiled call per plain ASCII prompt (the serving path) must answer exactly what the tokenizer
    plus the folded predictor answer, and leave every other text (non-ASCII, an added token) to them."""
    predictor = cpu_predictor
    out = np.full((2, 3, len(predictor.model_names)), np.nan, np.float32)
    covered = predictor._plain_path.score(text, out, 1)
    plain = (text.isascii() and all(c.isprintable() or c in "\t\n\r" for c in text)
             and not any(token in text for token in predictor.encoder.added_tokens))
    assert covered == plain
    if covered:
        quality, cost = _step_by_step(predictor, [text])
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
    expected_quality, expected_cost = _step_by_step(predictor, texts)
    np.testing.assert_array_equal(quality, expected_quality)
    np.testing.assert_array_equal(cost, expected_cost)


@pytest.mark.parametrize("text, message", [("", "empty"), ("   \n", "empty"), ("x" * (MAX_PROMPT_BYTES + 1), "over the limit")])
def test_check_prompt_rejects_without_echoing_text(text, message):
    with pytest.raises(PromptError, match=message) as info:
        check_prompt(text)
    assert "xxxx" not in str(info.value)


def test_score_cli_writes_scores_csv_shape(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "q1", "text": "What is entropy?"}\n{"id": "q2", "text": "Define a tort."}\n')
    assert routoo(["score", str(prompts), "--out", str(tmp_path / "s.csv")]) == 0
    rows = list(csv.reader(open(tmp_path / "s.csv")))
    assert rows[0][0] == "id" and len(rows[0]) == 33 and [r[0] for r in rows[1:]] == ["q1", "q2"]
    assert all(0 < float(v) < 1 for v in rows[1][1:])


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text("{broken\n")
    assert routoo(["score", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "Traceback" not in err


def test_train_cli_end_to_end(tmp_path, capsys):
    synthetic_dataset(tmp_path / "train", n=90)
    synthetic_dataset(tmp_path / "dev", n=30, seed=3)
    code = routoo(["train", "--data", str(tmp_path / "train"), "--dev", str(tmp_path / "dev"), "--encoder",
                   "static", "--out", str(tmp_path / "art"), "--hidden", "16", "--max-epochs", "5"])
    assert code == 0
    out = capsys.readouterr().out
    assert "per-model mean (no prompt)" in out and "tf-idf + logistic reg." in out
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert set(manifest["dev_metrics"]["baselines"]) == {"per-model mean (no prompt)", "tf-idf + logistic reg."}


@pytest.fixture(scope="module")
def static_encoder():
    return static_encoder_from()


def _tokenizer_ids(encoder, text):
    return [t for t in encoder.tokenizer.encode(text, add_special_tokens=False).ids if t != encoder._unk_id]


@pytest.mark.parametrize("text", [
    "Which of these is a prime? A. 4 B. 7\nC. 9", "naïve café 東京タワー (Tokyo)", "tab\tsep\nnew\rline",
    "a\x1cb c", "x\u2028y", "\x00nul\x00 bytes", "nbsp\u00a0and\u3000ideographic", "zero\u200bwidth",
    "supercalifragilistic" * 8, "", "   ", "word " * 400, "a." * 20_000, "(x+1)^2=" * 5_000 + " tail",
    "[UNK]", "see[PAD]here [unk] [UNK]x",
])
def test_static_chunk_cache_tokenizes_exactly_like_the_tokenizer(static_encoder, text):
    static_encoder.clear_caches()
    expected = _tokenizer_ids(static_encoder, text)
    assert static_encoder._token_ids(text) == expected
    assert static_encoder._token_ids(text) == expected          # second time from the cache


# Characters, plus the tokenizer's added tokens, which it matches in the raw text before normalising.
TEXT_PIECES = [*string.printable, *"éß×–“”πΩ東\u00a0", "[UNK]", "[PAD]", "[unk]"]


@settings(max_examples=300, deadline=None, derandomize=True)  # the same examples on every CI run
@given(st.lists(st.sampled_from(TEXT_PIECES), max_size=300).map("".join))
def test_static_tokenizer_matches_on_any_text(static_encoder, text):
    """Printable-ASCII chunks take the encoder's own WordPiece, the rest the tokenizer: both must give
    exactly the tokenizer's ids, cold and from the cache."""
    static_encoder.clear_caches()
    expected = _tokenizer_ids(static_encoder, text)
    assert static_encoder._token_ids(text) == expected
    assert static_encoder._token_ids(text) == expected


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from([*string.ascii_letters, *string.digits, *string.punctuation, " ", "\n", "\t",
                                 "un", "##", "able", "ing", "x" * 101, "é"]), max_size=400).map("".join))
def test_compiled_plain_ascii_tokenizer_matches(static_encoder, text):
    """Plain ASCII text takes the compiled WordPiece: words of any length, '##' in the text, more than
    max_tokens ids (the "é" sends some examples down the other path, for comparison)."""
    assert static_encoder._token_ids(text) == _tokenizer_ids(static_encoder, text)


MMLU_PRO = Path(__file__).resolve().parents[3] / "shared" / "data" / "mmlu-pro"


@pytest.mark.skipif(not (MMLU_PRO / "dev" / "prompts.jsonl").is_file(), reason="needs ../shared/data")
def test_static_tokenizer_matches_on_every_dev_prompt(static_encoder):
    static_encoder.clear_caches()
    texts = [p.text for p in read_prompts(MMLU_PRO / "dev" / "prompts.jsonl")]
    assert [static_encoder._token_ids(t) for t in texts] == [_tokenizer_ids(static_encoder, t) for t in texts]


def test_static_chunk_cache_stays_exact_when_it_fills(static_encoder, monkeypatch):
    """A full cache is cleared mid-prompt; the chunks of that prompt seen before the clear must come back."""
    import predictor_service.encoders as encoders

    monkeypatch.setattr(encoders, "CHUNK_CACHE_SIZE", 8)
    static_encoder.clear_caches()
    # "é" keeps these texts off the compiled plain-ASCII path, which has no cache.
    texts = ["alpha beta gamma délta", "alpha beta epsilon zeta eta théta iota", "kappa alpha lambda mu nu é"]
    try:
        for text in texts * 2:
            assert static_encoder._token_ids(text) == _tokenizer_ids(static_encoder, text)
            assert len(static_encoder._chunk_ids) <= 8
    finally:
        static_encoder.clear_caches()


def test_static_tokenizer_caches_only_short_chunks(static_encoder):
    """Long chunks (URLs, formulas) are tokenized each time, so no traffic can fill the cache with them."""
    import predictor_service.encoders as encoders

    static_encoder.clear_caches()
    long_chunk = "https://example.org/" + "x" * encoders.CACHED_CHUNK_CHARS
    text = f"see {long_chunk} and {long_chunk.upper()}日本"
    for _ in range(2):
        assert static_encoder._token_ids(text) == _tokenizer_ids(static_encoder, text)
    assert "see" in static_encoder._chunk_ids
    assert all(len(chunk) <= encoders.CACHED_CHUNK_CHARS for chunk in static_encoder._chunk_ids)


def test_static_encoder_refuses_a_table_smaller_than_its_vocabulary(static_encoder):
    """The CPU path reads table rows by token id without bounds checks."""
    with pytest.raises(ValueError, match="rows"):
        StaticEncoder(static_encoder.table.numpy()[:1000], static_encoder.tokenizer)
