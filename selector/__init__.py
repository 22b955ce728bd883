"""Routoo's cost-aware selector: turns the predictor's per-model quality and expected-cost vectors into
routing decisions (policies.py), served over gRPC (server.py, proto/selector.proto) with the pool file
(pool.toml) as the one source of truth for prices."""
