"""The Triton boundary's contract (predictor_service/contract.py): the committed model configs spell its
names, the served pool reads back what the launcher publishes, bad pools are refused with each caller's
error, and no product module repeats one of its literals."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from predictor_service import contract
from predictor_service.contract import ServedPool, ServedPoolError, pool_parameters
from predictor_service.remote import RemoteScoringError, served_pool
from selector.pool import PoolError, read_served_pool

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "model_repository"


def committed_config(model: str) -> model_config_pb2.ModelConfig:
    text = (REPOSITORY / model / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_the_committed_repository_holds_the_contracts_models():
    assert sorted(p.name for p in REPOSITORY.iterdir() if (p / "config.pbtxt").is_file()) == sorted(
        contract.SERVED_MODELS)


@pytest.mark.parametrize("model", contract.SERVED_MODELS)
def test_committed_configs_spell_the_contracts_tensors(model):
    config = committed_config(model)
    assert config.name == model
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        (contract.PROMPT, model_config_pb2.TYPE_STRING, [1])]     # Triton's TYPE_STRING is KServe's BYTES
    assert [(t.name, t.data_type) for t in config.output] == [
        (name, model_config_pb2.TYPE_FP32) for name in contract.OUTPUTS]
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")


def test_the_predictors_committed_parameters_are_contract_keys():
    assert set(committed_config(contract.PREDICTOR_MODEL).parameters) == {contract.ARTIFACT_PATH,
                                                                         contract.TORCH_THREADS}


def test_a_published_pool_reads_back():
    names = ["cheap", "mid", "big", 'odd "name" é']
    prices = [[0.1, 0.4], [1.0, 2.0], [None, None], [3.0, None]]
    parameters = pool_parameters(names, prices)
    assert set(parameters) == {contract.POOL_MODELS, contract.POOL_PRICES}
    pool = ServedPool.from_parameters(parameters, model="m")
    # A price with either half unknown is unknown: there is nothing to scale a cost from.
    assert pool == ServedPool(tuple(names), ((0.1, 0.4), (1.0, 2.0), None, None))
    # Without prices every price is unknown; the JSON form tritonclient returns reads the same.
    assert ServedPool.from_parameters({contract.POOL_MODELS: json.dumps(names)}, model="m").prices == (None,) * 4
    as_json = {"name": "m", "max_batch_size": 64,
               "parameters": {key: {"string_value": value} for key, value in parameters.items()}}
    assert ServedPool.from_json_config(as_json) == pool


BAD_POOLS = [
    ({}, "need 'pool_models'"),
    ({contract.POOL_MODELS: "not json"}, "need 'pool_models'"),
    ({contract.POOL_MODELS: json.dumps([1, 2])}, "must be a list of names"),
    ({contract.POOL_MODELS: json.dumps("a")}, "must be a list of names"),
    ({contract.POOL_MODELS: json.dumps(7)}, "need 'pool_models'"),
    ({**pool_parameters(["a", "b"], [[1.0, 1.0]])}, "a list of the same length"),
    ({**pool_parameters(["a"], [["x", 1.0]])}, r"'pool_prices' for 'a' must be \[input, output\]"),
    ({**pool_parameters(["a"], [5])}, r"'pool_prices' for 'a' must be \[input, output\]"),
    ({**pool_parameters(["a", "b\nc"], [None, None])}, r"name 'b\\nc' holds the character U\+000A"),
]


@pytest.mark.parametrize("parameters, message", BAD_POOLS)
def test_a_bad_pool_is_refused_naming_the_model_with_each_callers_error(parameters, message):
    with pytest.raises(ServedPoolError, match=message) as error:
        ServedPool.from_parameters(parameters, model="served-x")
    assert "'served-x'" in str(error.value)
    # The selector reports a PoolError; `routoo score --server` a RemoteScoringError; both ValueErrors.
    with pytest.raises(PoolError, match=message):
        read_served_pool(parameters, model="served-x")
    as_json = {"name": "served-x", "parameters": {k: {"string_value": v} for k, v in parameters.items()}}
    with pytest.raises(RemoteScoringError, match="'served-x' does not publish its pool .*materialised"):
        served_pool(as_json)


def test_the_contract_loads_without_numpy_or_torch():
    # The selector and the gateway read it; so does every Python-backend stub before its model loads.
    code = ("import sys, predictor_service.contract; "
            "print(sorted(m for m in ('numpy', 'torch', 'tritonclient') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Wire names and keys that only contract.py may spell (config.pbtxt files aside, which are checked above).
# bench/ is left out: its target "echo_floor" is a benchmark's name, the same word as the model's.
CONTRACT_STRINGS = {contract.PREDICTOR_MODEL, contract.ECHO_FLOOR_MODEL, contract.PROMPT, contract.QUALITY,
                    contract.EXPECTED_COST_USD, contract.POOL_MODELS, contract.POOL_PRICES,
                    contract.POOL_LABELS_FILE, contract.ARTIFACT_PATH, contract.TORCH_THREADS,
                    contract.SELECTOR_ADDRESS, contract.TRITON_GRPC_ADDRESS}
CONTRACT_PORTS = {contract.TRITON_HTTP_PORT, contract.TRITON_GRPC_PORT, contract.TRITON_METRICS_PORT,
                  contract.SELECTOR_PORT, contract.GATEWAY_PORT}
PRODUCT = ("predictor_service", "selector", "gateway", "cli", "model_repository")


def test_no_product_module_repeats_a_contract_literal():
    repeats = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "predictor_service" / "contract.py" or "proto" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
                    continue
                if node.value in CONTRACT_STRINGS or (isinstance(node.value, int) and node.value in CONTRACT_PORTS):
                    repeats.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not repeats, "use predictor_service.contract instead of:\n" + "\n".join(repeats)
