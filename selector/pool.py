"""The model pool: which models the selector may choose, their prices and latency (selector/pool.toml).

The pool file is the one source of truth for prices. The predictor was trained with prices of its own
(its config parameter `pool_prices`, read by `predictor_service.contract.ServedPool`); where the two differ,
the predictor's expected cost for a model is scaled by the ratio of blended prices, pool file over trained
(`PoolColumns.cost_scale`).
"""

from __future__ import annotations

import math
import re
import tomllib
import urllib.parse
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from predictor_service.contract import ServedPool, ServedPoolError, model_name_problem

DEFAULT_POOL_PATH = Path(__file__).resolve().parent / "pool.toml"

# Weight of the input price in a blended price. On mmlu-pro/train a prompt averages ~164 input tokens and
# the models answer with 30-380 output tokens (~200 typical), so input and output weigh about the same.
BLEND_INPUT_SHARE = 0.5

_FIELDS = {"name", "input_usd_per_mtok", "output_usd_per_mtok", "p95_latency_ms", "enabled",
           "base_url", "upstream_model", "api_key_env"}
# An environment variable's name (POSIX portable set). A key pasted in its place ("sk-...") fails this.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_env_name(value: str) -> bool:
    """True for a value shaped like an environment variable's name; anything else may be a key pasted in its
    place, and is never printed back."""
    return bool(_ENV_NAME.fullmatch(value))


class PoolError(ValueError):
    """A pool file that cannot be used; the message names the file, the model and the bad value."""


class PoolMismatchError(PoolError):
    """The pool file and the predictor disagree on the model names."""


def blended_usd_per_mtok(input_usd_per_mtok: float, output_usd_per_mtok: float) -> float:
    return BLEND_INPUT_SHARE * input_usd_per_mtok + (1 - BLEND_INPUT_SHARE) * output_usd_per_mtok


# Latency written for a model nobody measured (a dataset's model, or one the base pool file does not know):
# a stand-in, like every figure in pool.toml.
STAND_IN_P95_LATENCY_MS = 3000.0


@dataclass(frozen=True)
class PoolModel:
    """One model of a pool: of the routing pool (pool.toml, `Pool`) or of a dataset (its models.json,
    training/data.py). A dataset may not know a price; a routing pool knows both (`Pool` checks)."""

    name: str
    input_usd_per_mtok: float | None     # USD per million tokens; None = unknown (a dataset's pool only)
    output_usd_per_mtok: float | None
    p95_latency_ms: float = STAND_IN_P95_LATENCY_MS
    enabled: bool = True
    # Where the gateway forwards a request for this model (any OpenAI-compatible server: vLLM, Ollama,
    # OpenAI, a LiteLLM proxy). None = no upstream: the selector may still score it, the gateway never calls it.
    base_url: str | None = None          # e.g. "http://127.0.0.1:8000/v1" (the part before /chat/completions)
    upstream_model: str | None = None    # the name the upstream expects; None = this model's name
    api_key_env: str | None = None       # the NAME of the environment variable that holds the key, never the key
    price_note: str = ""                 # where a dataset's prices come from; pool files do not carry it

    @property
    def blended_usd_per_mtok(self) -> float:
        return blended_usd_per_mtok(self.input_usd_per_mtok, self.output_usd_per_mtok)


@dataclass(frozen=True)
class Pool:
    models: tuple[PoolModel, ...]

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if not names:
            raise PoolError("the pool is empty")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise PoolError(f"duplicate model names in the pool: {duplicates}")
        unpriced = [m.name for m in self.models if m.input_usd_per_mtok is None or m.output_usd_per_mtok is None]
        if unpriced:
            raise PoolError(f"a pool needs both prices of every model; unknown for {unpriced}")

    def __len__(self) -> int:
        return len(self.models)

    # Arrays and the name index are built once: the selector reads them on every request.
    @cached_property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    @cached_property
    def _index(self) -> dict[str, int]:
        return {m.name: i for i, m in enumerate(self.models)}

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError as e:
            raise PoolError(f"unknown model {name!r}; the pool has {self.names}") from e

    @cached_property
    def enabled(self) -> np.ndarray:              # (n_models,) bool, read-only
        return _read_only(np.array([m.enabled for m in self.models], dtype=bool))

    @cached_property
    def p95_latency_ms(self) -> np.ndarray:       # (n_models,) float64, read-only
        return _read_only(np.array([m.p95_latency_ms for m in self.models], dtype=np.float64))


def pool_for_models(names: list[str], prices: list[list[float | None]], base: Pool | None = None) -> Pool:
    """A pool for a predictor's models, e.g. an artifact trained on other data: its trained prices (0 where
    unknown: with no trained price the predictor's cost is used as it is), and each model's p95 latency,
    `enabled` and upstream from `base` where it has the model, else STAND_IN_P95_LATENCY_MS and none."""
    if len(names) != len(prices):
        raise PoolError(f"{len(names)} model names but {len(prices)} prices")
    known = {m.name: m for m in base.models} if base is not None else {}
    models = []
    for name, price in zip(names, prices):
        price_in, price_out = (price or [None, None])[:2]
        model = known.get(name)
        models.append(PoolModel(name, float(price_in or 0.0), float(price_out or 0.0),
                                model.p95_latency_ms if model else STAND_IN_P95_LATENCY_MS,
                                model.enabled if model else True,
                                **({key: getattr(model, key) for key in _UPSTREAM_FIELDS} if model else {})))
    return Pool(tuple(models))


def _is_control(ch: str) -> bool:
    """Characters a TOML string or comment may not hold as they are."""
    return ord(ch) < 0x20 or ord(ch) == 0x7F


def _toml_string(text: str) -> str:
    """A TOML basic string: quote and backslash escaped, control characters as \\uXXXX."""
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise PoolError(f"model name {text!r} holds a lone surrogate, which no pool file can hold")
    body = "".join("\\" + ch if ch in '"\\' else f"\\u{ord(ch):04x}" if _is_control(ch) else ch for ch in text)
    return f'"{body}"'


def pool_toml(pool: Pool, header: str = "") -> str:
    """The pool as a pool file that load_pool reads back."""
    lines = ["# " + "".join(f"\\x{ord(ch):02x}" if _is_control(ch) or 0xD800 <= ord(ch) <= 0xDFFF else ch
                           for ch in line).rstrip()
             for line in header.splitlines()]
    for m in pool.models:
        lines += ["", "[[models]]", f"name = {_toml_string(m.name)}",
                  f"input_usd_per_mtok = {m.input_usd_per_mtok!r}", f"output_usd_per_mtok = {m.output_usd_per_mtok!r}",
                  f"p95_latency_ms = {m.p95_latency_ms!r}", f"enabled = {str(m.enabled).lower()}"]
        lines += [f"{key} = {_toml_string(getattr(m, key))}" for key in _UPSTREAM_FIELDS if getattr(m, key) is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


_UPSTREAM_FIELDS = ("base_url", "upstream_model", "api_key_env")


def _upstream_fields(entry: dict, where: str) -> dict[str, str]:
    """base_url (http or https URL), upstream_model (non-empty), api_key_env (an environment variable name)."""
    values = {}
    for key in _UPSTREAM_FIELDS:
        if key not in entry:
            continue
        value = entry[key]
        if not isinstance(value, str) or not value.strip():
            raise PoolError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
        values[key] = value
    url = values.get("base_url")
    if url is not None:
        _check_base_url(url, where)
    env = values.get("api_key_env")
    if env is not None and not is_env_name(env):
        # Never echo the value: it may be a key pasted where its variable's name belongs.
        raise PoolError(f"{where}: 'api_key_env' must be the name of an environment variable (letters, digits, "
                        f"'_'; the key itself never goes in the pool file), got a {len(env)}-character value "
                        f"that is not one")
    if ("upstream_model" in values or "api_key_env" in values) and url is None:
        raise PoolError(f"{where}: 'upstream_model' and 'api_key_env' need a 'base_url'")
    return values


def _check_base_url(url: str, where: str) -> None:
    """PoolError unless `url` is http(s)://host[:port][/path] with a host and a port in 1-65535, and no user or
    password: the URL is shown in errors and logs, so a credential in it would be too (keys go in the
    environment, api_key_env)."""
    example = "such as 'http://127.0.0.1:8000/v1'"
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
        raise PoolError(f"{where}: 'base_url' must be an http:// or https:// URL {example}, got {url!r}")
    authority = url.split("://", 1)[1].split("/", 1)[0]
    if "@" in authority:
        # Not echoed: the part before "@" is a credential.
        raise PoolError(f"{where}: 'base_url' must not hold a user or password (before '@'); put the key in "
                        f"the environment variable named by 'api_key_env'")
    try:
        parts = urllib.parse.urlsplit(url)
        port, host = parts.port, parts.hostname          # .port raises ValueError past 65535 or not a number
    except ValueError as e:
        raise PoolError(f"{where}: 'base_url' {url!r} is not a valid URL ({e})") from e
    if not host or port == 0:
        raise PoolError(f"{where}: 'base_url' {url!r} needs a host and a port in 1-65535 (or none), {example}")


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def load_pool(path: str | Path | None = None) -> Pool:
    """Reads a pool file (TOML, `[[models]]` tables); `None` = the default selector/pool.toml."""
    path = Path(path) if path is not None else DEFAULT_POOL_PATH
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PoolError(f"{path}: no such pool file") from e
    except tomllib.TOMLDecodeError as e:
        raise PoolError(f"{path}: not valid TOML ({e})") from e
    entries = spec.get("models")
    if not isinstance(entries, list) or not entries:
        raise PoolError(f"{path}: expected [[models]] tables with {sorted(_FIELDS)}")
    unknown = sorted(set(spec) - {"models"})
    if unknown:             # a "[[modles]]" table or a stray setting would otherwise be dropped without a word
        raise PoolError(f"{path}: unknown top-level keys {unknown}; a pool file holds only [[models]] tables")
    models = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise PoolError(f"{path}: models[{i}] must be a [[models]] table, got {type(entry).__name__}")
        where = f"{path}: models[{i}] ({entry.get('name')!r})"
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise PoolError(f"{where}: unknown keys {unknown}; valid keys are {sorted(_FIELDS)}")
        name = entry.get("name")
        problem = model_name_problem(name)
        if problem:
            raise PoolError(f"{where}: 'name' {problem}")

        def number(key: str, *, positive: bool = False) -> float:
            value = entry.get(key)
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and (value > 0 if positive else value >= 0))
            if not ok:
                raise PoolError(f"{where}: {key!r} must be a number {'> 0' if positive else '>= 0'}, "
                                f"got {value!r}")
            return float(value)

        enabled = entry.get("enabled", True)
        if not isinstance(enabled, bool):
            raise PoolError(f"{where}: 'enabled' must be true or false, got {enabled!r}")
        models.append(PoolModel(name, number("input_usd_per_mtok"), number("output_usd_per_mtok"),
                                number("p95_latency_ms", positive=True), enabled, **_upstream_fields(entry, where)))
    try:
        return Pool(tuple(models))
    except PoolError as e:
        raise PoolError(f"{path}: {e}") from e


def read_served_pool(parameters: dict[str, str], *, model: str) -> ServedPool:
    """The predictor's pool from its config's string parameters; PoolError naming the model otherwise."""
    try:
        return ServedPool.from_parameters(parameters, model=model)
    except ServedPoolError as e:
        raise PoolError(str(e)) from e


@dataclass(frozen=True)
class PoolColumns:
    """Maps the predictor's output columns onto the pool's order and prices."""

    columns: np.ndarray      # (n_models,) int: predictor column of each pool model
    cost_scale: np.ndarray   # (n_models,) float64: pool blended price / trained blended price

    def apply(self, quality: np.ndarray, expected_cost_usd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(batch, n_served) predictor outputs -> (batch, n_models) in pool order, costs at pool prices.

        Keeps the predictor's dtype (FP32 from Triton), which the batch solver reads at half the bytes.
        """
        cost = (expected_cost_usd[:, self.columns] * self.cost_scale).astype(expected_cost_usd.dtype, copy=False)
        return quality[:, self.columns], cost


def match_pool(pool: Pool, served: ServedPool) -> PoolColumns:
    """Checks the pool file against the predictor's models; raises PoolMismatchError naming every difference."""
    pool_names, served_names = set(pool.names), set(served.names)
    missing = [n for n in served.names if n not in pool_names]
    extra = [n for n in pool.names if n not in served_names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"served by the predictor but not in the pool file: {missing}")
        if extra:
            parts.append(f"in the pool file but not served by the predictor: {extra}")
        raise PoolMismatchError("the pool file does not match the predictor's models; " + "; ".join(parts)
                                + " (`routoo write-pool --artifact ARTIFACT --out FILE` writes a pool file for an "
                                  "artifact's models)")
    column_of = {name: i for i, name in enumerate(served.names)}
    columns = np.array([column_of[m.name] for m in pool.models], dtype=np.int64)
    scale = np.ones(len(pool), dtype=np.float64)
    for i, model in enumerate(pool.models):
        trained = served.prices[columns[i]]
        trained_blended = blended_usd_per_mtok(*trained) if trained is not None else 0.0
        # Unknown or zero trained price: there is nothing to scale from, so the prediction stands.
        if trained_blended > 0:
            scale[i] = model.blended_usd_per_mtok / trained_blended
    return PoolColumns(columns, scale)
