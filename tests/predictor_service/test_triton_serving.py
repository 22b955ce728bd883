"""The predictor in the real Triton Inference Server: started on free loopback ports once for the module,
spoken to with tritonclient (sync and asyncio gRPC), stopped in teardown."""

import asyncio
import json
import logging
import os
import signal
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from predictor_service.artifact import Artifact, default_artifact_path
from predictor_service.contract import (ECHO_FLOOR_MODEL, EXPECTED_COST_USD, MAX_PROMPT_BYTES, POOL_LABELS_FILE,
                                        POOL_MODELS, POOL_PRICES, PREDICTOR_MODEL, PROMPT, PROMPT_DATATYPE, QUALITY)
from predictor_service.predictor import Predictor
from cli.main import main as routoo
from predictor_service.remote import score_remote
from cli.predictor_serving import default_instance_count
from predictor_service.triton_server import TritonServer, TritonServerError, materialise_repository
from tests.support.predicting import assert_scores_equal

MODEL = PREDICTOR_MODEL
CANARY = "zebra-canary-7731"   # a word that must never reach the server's log
TOPICS = ["photosynthesis", "tax law", "sorting algorithms", "the French revolution", "eigenvalues",
          "protein folding", "Kant's ethics", "compilers"]


def make_prompts(n: int) -> list[str]:
    """Distinct prompts whose scores differ by much more than the tolerance (topic and length vary)."""
    return [f"Question {i} about {TOPICS[i % len(TOPICS)]}: explain {CANARY} " + "in detail and with care " * i
            for i in range(n)]


EDGE_PROMPTS = [
    "What is 2 + 2?",
    "Ünïcödé prompt — 日本語のテキストと emoji 🚀 mixed in",
    "Line one\nline two\n\ttabbed line three",
    "x",
    "Explain quantum field theory in detail. " * 400,          # past max_tokens: truncated the same way
    "A" * (MAX_PROMPT_BYTES - 1),                               # just under the size limit
]


@pytest.fixture(scope="module")
def predictor():
    return Predictor.load(default_artifact_path(), device="cpu")


def bytes_input(raw_prompts: list[bytes]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(PROMPT, [len(raw_prompts), 1], PROMPT_DATATYPE)
    tensor.set_data_from_numpy(np.array(raw_prompts, dtype=object).reshape(-1, 1))
    return tensor


def model_stats(client: grpcclient.InferenceServerClient) -> dict:
    return client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]


def test_outputs_over_grpc_equal_in_process_predictor(triton_server, predictor):
    expected_quality, expected_cost = predictor.predict(EDGE_PROMPTS)
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    # The whole set as one request, then each prompt alone: batch composition must not change a row.
    result = client.infer(MODEL, [bytes_input([p.encode() for p in EDGE_PROMPTS])])
    assert_scores_equal(result.as_numpy(QUALITY), result.as_numpy(EXPECTED_COST_USD),
                        expected_quality, expected_cost)
    for i, prompt in enumerate(EDGE_PROMPTS):
        result = client.infer(MODEL, [bytes_input([prompt.encode()])])
        assert_scores_equal(result.as_numpy(QUALITY), result.as_numpy(EXPECTED_COST_USD),
                            expected_quality[i:i + 1], expected_cost[i:i + 1])


def test_pool_is_discoverable_from_config_and_labels(triton_server, predictor):
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    config = client.get_model_config(MODEL, as_json=True)["config"]
    assert json.loads(config["parameters"][POOL_MODELS]["string_value"]) == predictor.model_names
    assert json.loads(config["parameters"][POOL_PRICES]["string_value"]) == predictor.model_prices
    assert int(config["max_batch_size"]) > 0 and "dynamic_batching" in config

    # Classification extension: the top-3 of QUALITY come back named by the label file.
    prompt = "Prove that there are infinitely many primes."
    result = client.infer(MODEL, [bytes_input([prompt.encode()])],
                          outputs=[grpcclient.InferRequestedOutput(QUALITY, class_count=3)])
    top = [entry.decode().split(":") for entry in result.as_numpy(QUALITY).reshape(-1)]
    quality = predictor.predict([prompt])[0][0]
    assert [label for _, _, label in top] == [predictor.model_names[j] for j in np.argsort(-quality)[:3]]
    assert [int(index) for _, index, _ in top] == list(np.argsort(-quality)[:3])


def test_concurrent_requests_are_batched_without_cross_talk(triton_server, predictor):
    prompts = make_prompts(64)
    expected_quality, expected_cost = predictor.predict(prompts)
    gaps = np.abs(expected_quality[:, None, :] - expected_quality[None, :, :]).max(-1)  # (64, 64)
    assert gaps[~np.eye(64, dtype=bool)].min() > 1e-4, "prompts too alike to detect cross-talk"  # 10x the tolerance
    sync_client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    before = model_stats(sync_client)

    async def send_all():
        async with grpcaio.InferenceServerClient(triton_server.grpc_url) as client:
            return await asyncio.gather(*(client.infer(MODEL, [bytes_input([p.encode()])]) for p in prompts))

    results = asyncio.run(send_all())
    for i, result in enumerate(results):
        assert_scores_equal(result.as_numpy(QUALITY), result.as_numpy(EXPECTED_COST_USD),
                            expected_quality[i:i + 1], expected_cost[i:i + 1])

    after = model_stats(sync_client)
    # Counters still at zero are left out of the JSON (proto3), e.g. when this test runs first.
    requests = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert requests == 64
    assert executions < 64, f"64 concurrent requests ran as {executions} executions: no batching"
    batched = {int(s["batch_size"]) for s in after["batch_stats"] if int(s["batch_size"]) > 1}
    assert batched, "statistics show no execution with batch size > 1"


def test_bad_requests_fail_alone_and_server_stays_up(triton_server, predictor):
    good = make_prompts(24)
    bad = {b"": "prompt is empty", b"   \n\t ": "prompt is empty",
           b"caf\xc3 " + CANARY.encode() + b"\xff": "not valid UTF-8",
           (CANARY + " ").encode() * (MAX_PROMPT_BYTES // 10): f"over the limit of {MAX_PROMPT_BYTES} bytes"}
    # Bad requests interleaved with good ones, all in flight at once, so batches mix them.
    payloads = [p.encode() for p in good]
    for k, raw in enumerate(bad):
        payloads.insert(3 + 6 * k, raw)
    expected_quality, expected_cost = predictor.predict(good)

    async def send_all():
        async with grpcaio.InferenceServerClient(triton_server.grpc_url) as client:
            return await asyncio.gather(*(client.infer(MODEL, [bytes_input([raw])]) for raw in payloads),
                                        return_exceptions=True)

    sync_client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    before = model_stats(sync_client)
    results = asyncio.run(send_all())
    after = model_stats(sync_client)
    good_index = 0
    for raw, result in zip(payloads, results):
        if raw in bad:
            assert isinstance(result, InferenceServerException), f"bad prompt got an answer: {result}"
            assert bad[raw] in result.message() and result.status() == "StatusCode.INVALID_ARGUMENT"
            assert result.message().startswith("PROMPT: "), result.message()     # names the input
            assert CANARY not in result.message()   # errors never echo the prompt
            continue
        assert not isinstance(result, Exception), f"good prompt failed: {result}"
        assert_scores_equal(result.as_numpy(QUALITY), result.as_numpy(EXPECTED_COST_USD),
                            expected_quality[good_index:good_index + 1], expected_cost[good_index:good_index + 1])
        good_index += 1
    assert int(after["execution_count"]) - int(before["execution_count"]) < len(payloads)

    # One bad row fails its whole multi-row request, naming the row; the server keeps answering.
    with pytest.raises(InferenceServerException, match="PROMPT row 1: prompt is empty"):
        sync_client.infer(MODEL, [bytes_input([b"fine prompt", b"", b"another"])])
    assert triton_server.running() and sync_client.is_model_ready(MODEL)
    names, quality, _ = score_remote(triton_server.grpc_url, good[:2])
    np.testing.assert_allclose(quality, expected_quality[:2], rtol=0, atol=1e-5)
    assert CANARY not in triton_server.log_path.read_text(errors="replace")


def test_echo_floor_answers_zeros_of_pool_width(triton_server, predictor):
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    result = client.infer(ECHO_FLOOR_MODEL, [bytes_input([b"a", b"b", b"c"])])
    for name in (QUALITY, EXPECTED_COST_USD):
        out = result.as_numpy(name)
        assert out.shape == (3, len(predictor.model_names)) and out.dtype == np.float32 and not out.any()


def test_score_remote_chunks_by_max_batch_size(triton_server, predictor):
    prompts = make_prompts(70)   # past max_batch_size (64): two requests
    names, quality, cost = score_remote(triton_server.grpc_url, prompts)
    expected_quality, expected_cost = predictor.predict(prompts)
    assert names == predictor.model_names
    assert_scores_equal(quality, cost, expected_quality, expected_cost)


def test_metrics_endpoint_reports_inference_counts(triton_server):
    with urllib.request.urlopen(triton_server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    assert f'nv_inference_request_success{{model="{MODEL}",version="1"}}' in text


def test_clash_on_a_requested_port_fails_with_the_server_log(triton_server):
    taken = int(triton_server.grpc_url.rsplit(":", 1)[1])
    with pytest.raises(TritonServerError, match="(?s)exited with code.*last log lines.*already in use"):
        with TritonServer(grpc_port=taken, models=(ECHO_FLOOR_MODEL,), ready_timeout_s=60):
            pass
    assert triton_server.running()


def test_a_crash_while_starting_is_started_again(caplog):
    """tritonserver once died of SIGABRT on a supervised restart (CI): a crash before ready is retried."""
    server = TritonServer(models=(ECHO_FLOOR_MODEL,), ready_timeout_s=60)
    crashed = []

    def crash_the_first_launch() -> None:
        deadline = time.monotonic() + 30
        while server.pid is None and time.monotonic() < deadline:
            time.sleep(0.01)
        crashed.append(server.pid)
        os.kill(server.pid, signal.SIGABRT)

    killer = threading.Thread(target=crash_the_first_launch)
    with caplog.at_level(logging.WARNING, logger="predictor_service.triton_server"):
        killer.start()
        with server:
            killer.join()
            assert server.running() and server.pid != crashed[0]
            with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as response:
                assert response.status == 200
    assert "tritonserver was killed by SIGABRT before it was ready; starting it again" in caplog.text


def test_a_stop_while_starting_is_not_retried():
    server = TritonServer(models=(ECHO_FLOOR_MODEL,), ready_timeout_s=60)

    def stop_the_launch() -> None:
        deadline = time.monotonic() + 30
        while server.pid is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)     # as a user's kill -9 would: not a crash, not retried

    killer = threading.Thread(target=stop_the_launch)
    killer.start()
    with pytest.raises(TritonServerError, match="exited with code -9 before it was ready") as error:
        with server:
            pass
    killer.join()
    assert error.value.returncode == -signal.SIGKILL


def test_materialised_repository_can_turn_batching_off(tmp_path):
    repo = materialise_repository(tmp_path, default_artifact_path(), models=(MODEL,),
                                  dynamic_batching=False, instance_count=2)
    config = text_format.Parse((repo / MODEL / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    names = Artifact.load(default_artifact_path()).manifest.model_names
    assert not config.HasField("dynamic_batching") and config.max_batch_size > 0
    assert [g.count for g in config.instance_group] == [2]
    assert json.loads(config.parameters[POOL_MODELS].string_value) == names
    assert (repo / MODEL / POOL_LABELS_FILE).read_text().split() == names


@pytest.mark.parametrize("kind, cpus, expected", [("KIND_CPU", 1, 1), ("KIND_CPU", 2, 1), ("KIND_CPU", 16, 8),
                                                  ("KIND_GPU", 16, 1)])
def test_instances_are_sized_for_the_machine(kind, cpus, expected):
    assert default_instance_count(kind, cpus) == expected


def test_serve_predictor_writes_the_repository_it_would_serve(tmp_path, capsys):
    assert routoo(["serve-predictor", "--write-repository", str(tmp_path / "a"), "--instance-count", "3",
                   "--no-dynamic-batching"]) == 0
    config = text_format.Parse((tmp_path / "a" / MODEL / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert [g.count for g in config.instance_group] == [3] and not config.HasField("dynamic_batching")
    assert routoo(["serve-predictor", "--write-repository", str(tmp_path / "b"), "--max-queue-size", "7"]) == 0
    config = text_format.Parse((tmp_path / "b" / MODEL / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    policy = config.dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 7
    # By default, and with 0, no queue policy at all (not an empty one): the size bound stalled Triton 2.51
    # ~0.5 s at a time under load (config.pbtxt's comment has the A/B).
    for folder, extra in (("c", []), ("d", ["--max-queue-size", "0"])):
        assert routoo(["serve-predictor", "--write-repository", str(tmp_path / folder), *extra]) == 0
        config = text_format.Parse((tmp_path / folder / MODEL / "config.pbtxt").read_text(),
                                   model_config_pb2.ModelConfig())
        assert config.HasField("dynamic_batching") and not config.dynamic_batching.HasField("default_queue_policy")
    with pytest.raises(SystemExit) as exit_:
        routoo(["serve-predictor", "--instance-count", "0"])
    assert exit_.value.code == 2 and "--instance-count: must be >= 1" in capsys.readouterr().err


def test_restart_comes_back_on_the_same_ports(triton_server):
    url = triton_server.grpc_url
    triton_server.restart()
    assert triton_server.grpc_url == url
    names, quality, _ = score_remote(url, ["Is the server back?"])
    assert quality.shape == (1, len(names))


def test_serve_predictor_prints_the_end_of_tritonservers_log_when_it_dies(tmp_path):
    """Its run directory (and the log in it) is removed on exit, and in a pod stderr is what `kubectl logs`
    keeps: the log's end goes there."""
    import os
    import signal
    import subprocess
    import sys

    from predictor_service.triton_server import PROJECT_ROOT

    process = subprocess.Popen([sys.executable, "-m", "cli.main", "serve-predictor", "--grpc-port", "0",
                                "--http-port", "0", "--metrics-port", "0", "--instance-count", "1"],
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    try:
        assert "routoo_predictor ready" in process.stdout.readline()
        children = subprocess.run(["pgrep", "-f", "tritonserver --model-repository"], capture_output=True,
                                  text=True).stdout.split()
        tritons = [int(pid) for pid in children if _parent_chain_has(int(pid), process.pid)]
        assert tritons, "no tritonserver under serve-predictor"
        os.kill(tritons[0], signal.SIGKILL)
        assert process.wait(timeout=60) == 1
        err = process.stderr.read()
        assert "tritonserver exited; the end of its log" in err
        assert "Started GRPCInferenceService" in err           # a line of Triton's own log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _parent_chain_has(pid: int, ancestor: int) -> bool:
    from pathlib import Path

    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False
