"""One PoolModel for a dataset's pool (models.json, prices may be unknown) and the routing pool (pool.toml)."""

import json

import pytest

from selector.pool import STAND_IN_P95_LATENCY_MS, Pool, PoolError, PoolModel, pool_for_models
from training.data import load_dataset


def write_dataset(folder, models: list[dict]) -> None:
    names = [m["name"] for m in models]
    (folder / "prompts.jsonl").write_text('{"id": "p1", "text": "What is 2 + 2?"}\n')
    (folder / "scores.csv").write_text("id," + ",".join(names) + "\np1," + ",".join("1" for _ in names) + "\n")
    (folder / "costs.csv").write_text("id," + ",".join(names) + "\np1," + ",".join("0.001" for _ in names) + "\n")
    (folder / "models.json").write_text(json.dumps({"models": models}))


def test_a_datasets_models_are_pool_models_with_unknown_prices_kept(tmp_path):
    write_dataset(tmp_path, [{"name": "listed", "input_usd_per_mtok": 0.5, "output_usd_per_mtok": 1.5,
                              "price_note": "list price"},
                             {"name": "unlisted", "input_usd_per_mtok": None, "output_usd_per_mtok": None}])
    pool = load_dataset(tmp_path).pool
    assert pool == [PoolModel("listed", 0.5, 1.5, price_note="list price"), PoolModel("unlisted", None, None)]
    assert all(m.p95_latency_ms == STAND_IN_P95_LATENCY_MS and m.enabled for m in pool)
    # Routing needs prices: the dataset's models as they are are refused, with the unpriced one named ...
    with pytest.raises(PoolError, match=r"both prices .*\['unlisted'\]"):
        Pool(tuple(pool))
    # ... and pool_for_models (what `routoo write-pool` uses) routes an unknown price at the predictor's cost.
    routed = pool_for_models([m.name for m in pool], [[m.input_usd_per_mtok, m.output_usd_per_mtok] for m in pool])
    assert [(m.input_usd_per_mtok, m.output_usd_per_mtok) for m in routed.models] == [(0.5, 1.5), (0.0, 0.0)]
