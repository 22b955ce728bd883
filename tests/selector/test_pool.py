"""The routing pool file: the default pool matches the default artifact, bad files are refused with the file
and the value, and a pool is mapped onto the predictor's columns and prices."""

import json

import numpy as np
import pytest

from predictor_service.artifact import default_artifact_path
from selector.pool import (DEFAULT_POOL_PATH, STAND_IN_P95_LATENCY_MS, Pool, PoolError, PoolMismatchError, PoolModel,
                           ServedPool, blended_usd_per_mtok, load_pool, match_pool, pool_for_models, pool_toml)


def test_default_pool_has_the_32_models_and_prices_of_the_default_artifact():
    # The committed artifact's manifest carries the training data's pool and prices, so this holds on a
    # machine without ../shared/data too.
    manifest = json.loads((default_artifact_path() / "manifest.json").read_text())
    pool = load_pool()
    assert pool.names == manifest["model_names"] and len(pool.names) == 32
    for model, (input_usd, output_usd) in zip(pool.models, manifest["model_prices"]):
        assert (model.input_usd_per_mtok, model.output_usd_per_mtok) == (input_usd, output_usd)
        assert model.p95_latency_ms > 0 and model.enabled
    assert "STAND-IN" in DEFAULT_POOL_PATH.read_text()


_A = "[[models]]\nname = 'a'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\np95_latency_ms = 5\n"


@pytest.mark.parametrize("body, message", [
    ("[[models]]\nname = 'a'\ninput_usd_per_mtok = -1\noutput_usd_per_mtok = 1\np95_latency_ms = 5\n",
     "'input_usd_per_mtok' must be a number >= 0"),
    ("[[models]]\nname = 'a'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\np95_latency_ms = 0\n",
     "'p95_latency_ms' must be a number > 0"),
    ("[[models]]\nname = 'a'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\np95_latency_ms = 5\nprice = 3\n",
     r"unknown keys \['price'\]"),
    ("[[models]]\nname = 'a'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\np95_latency_ms = 5\n" * 2,
     r"duplicate model names in the pool: \['a'\]"),
    ("models = [", "not valid TOML"),
    ("models = [1, 2]\n", r"models\[0\] must be a \[\[models\]\] table, got int"),
    (_A + "\n[[modles]]\nname = 'b'\n", r"unknown top-level keys \['modles'\]"),
    (_A + "base_url = 'http://h:99999/v1'\n", "is not a valid URL"),
    (_A + "base_url = 'http://[::1/v1'\n", "is not a valid URL"),
    (_A + "base_url = 'http://:80/v1'\n", "needs a host and a port in 1-65535"),
    (_A + "base_url = 'ftp://h/v1'\n", "must be an http:// or https:// URL"),
])
def test_bad_pool_files_are_refused_with_the_file_and_the_value(tmp_path, body, message):
    path = tmp_path / "pool.toml"
    path.write_text(body)
    with pytest.raises(PoolError, match=message) as error:
        load_pool(path)
    assert str(path) in str(error.value)


def test_a_base_url_with_a_password_is_refused_without_echoing_it(tmp_path):
    path = tmp_path / "pool.toml"
    path.write_text(_A + "base_url = 'https://user:sk-secret-123@h:8443/v1'\n")
    with pytest.raises(PoolError, match="must not hold a user or password") as error:
        load_pool(path)
    assert "sk-secret-123" not in str(error.value)
    path.write_text(_A + "base_url = 'https://h:8443/v1'\n")
    assert load_pool(path).models[0].base_url == "https://h:8443/v1"


def test_pool_mismatch_names_every_difference():
    pool = Pool((PoolModel("a", 1, 1, 5), PoolModel("b", 1, 1, 5), PoolModel("extra", 1, 1, 5)))
    served = ServedPool(("b", "a", "missing"), ((1, 1), (1, 1), (1, 1)))
    with pytest.raises(PoolMismatchError, match=r"not in the pool file: \['missing'\].*not served by the predictor: "
                                                r"\['extra'\]"):
        match_pool(pool, served)


def test_a_pool_for_other_models_keeps_known_settings_and_reads_back(tmp_path):
    base = Pool((PoolModel("known", 9.0, 9.0, 1234.0, enabled=False),))
    names = ["known", 'odd "name" \\ é🙂', "unpriced"]
    pool = pool_for_models(names, [[1.0, 2.0], [0.5, 0.25], [None, None]], base=base)
    path = tmp_path / "pool.toml"
    path.write_text(pool_toml(pool, "header line\nsecond \x01\udc80"), encoding="utf-8")
    loaded = load_pool(path)
    assert loaded == pool and loaded.names == names
    # Prices as trained; latency and `enabled` from the base pool where it has the model, else stand-ins.
    assert loaded.models[0] == PoolModel("known", 1.0, 2.0, 1234.0, enabled=False)
    assert loaded.models[2] == PoolModel("unpriced", 0.0, 0.0, STAND_IN_P95_LATENCY_MS)
    # A model without a trained price keeps the predictor's cost (scale 1), whatever the file's 0 says.
    served = ServedPool(tuple(names), ((1.0, 2.0), (0.5, 0.25), None))
    assert match_pool(loaded, served).cost_scale.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(PoolError, match="lone surrogate"):
        pool_toml(pool_for_models(["bad\udc80"], [[1.0, 1.0]]))
    # A control character would survive TOML escaping but not the label file's one name a line.
    path.write_text(pool_toml(pool_for_models(["a\tb"], [[1.0, 1.0]])), encoding="utf-8")
    with pytest.raises(PoolError, match=r"'name' holds the character U\+0009"):
        load_pool(path)


def test_pool_order_and_prices_are_mapped_onto_the_predictor_columns():
    pool = Pool((PoolModel("a", 2.0, 6.0, 5), PoolModel("b", 1.0, 1.0, 5), PoolModel("c", 1.0, 1.0, 5)))
    served = ServedPool(("c", "a", "b"), ((1.0, 1.0), (1.0, 3.0), None))
    columns = match_pool(pool, served)
    # a: pool blended 4.0 over trained 2.0; b: trained price unknown, kept; c: same price.
    assert columns.cost_scale.tolist() == [blended_usd_per_mtok(2, 6) / blended_usd_per_mtok(1, 3), 1.0, 1.0]
    quality = np.array([[0.3, 0.1, 0.2]])          # predictor order: c, a, b
    cost = np.array([[3.0, 1.0, 2.0]])
    q, c = columns.apply(quality, cost)
    assert q.tolist() == [[0.1, 0.2, 0.3]] and c.tolist() == [[2.0, 2.0, 3.0]]
