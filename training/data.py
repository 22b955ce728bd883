"""Loading of the canonical routing dataset format (see ../shared/data/README.md).

A dataset folder holds `prompts.jsonl`, `scores.csv`, `costs.csv` and `models.json`. Any pool of models and
any number of prompts is accepted. Problems in the files are either fatal (a `DatasetError` whose message
names the file, the line and the bad value) or counted in `LoadReport` (blanks, ids without a prompt,
prompts without scores), never a stack trace from deep inside numpy.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from predictor_service.contract import model_name_problem
from selector.pool import PoolModel


class DatasetError(ValueError):
    """A dataset folder that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    category: str = ""


@dataclass
class LoadReport:
    """What was skipped or missing while loading; printed by the CLI, never silently dropped."""

    blank_scores: int = 0
    blank_costs: int = 0
    unknown_ids: int = 0          # rows of scores/costs whose id has no prompt
    prompts_without_scores: int = 0
    malformed_rows: int = 0
    duplicate_rows: int = 0       # a second row for an id in scores/costs: the first is kept
    lone_surrogates: int = 0      # "\ud800"-style escapes in prompt texts, read as U+FFFD
    models_without_scores: int = 0
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{name.replace('_', ' ')}: {value}" for name, value in vars(self).items()
                 if isinstance(value, int) and value]
        return ", ".join(parts) if parts else "clean"

    def details(self, limit: int = 5) -> list[str]:
        """The first `limit` messages (which line, which model), then how many more there are."""
        extra = len(self.messages) - limit
        return self.messages[:limit] + ([f"... {extra} more"] if extra > 0 else [])


@dataclass
class RoutingDataset:
    prompts: list[Prompt]
    pool: list[PoolModel]
    quality: np.ndarray             # (n_prompts, n_models) float32 in [0, 1], NaN = unknown
    cost_usd: np.ndarray            # (n_prompts, n_models) float32 >= 0, NaN = unknown
    report: LoadReport
    digest: str                     # sha256 over the four files, recorded in trained artifacts

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.pool]

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    def __len__(self) -> int:
        return len(self.prompts)

    def select_models(self, names: list[str]) -> "RoutingDataset":
        """The same prompts restricted to a sub-pool, in the order given."""
        index = {name: i for i, name in enumerate(self.model_names)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise DatasetError(f"unknown model(s) {unknown}; the pool has {self.model_names}")
        cols = [index[n] for n in names]
        return RoutingDataset(self.prompts, [self.pool[c] for c in cols], self.quality[:, cols],
                              self.cost_usd[:, cols], self.report, self.digest)

    def subset(self, rows: np.ndarray | list[int]) -> "RoutingDataset":
        rows = np.asarray(rows, dtype=np.int64)
        return RoutingDataset([self.prompts[i] for i in rows], self.pool, self.quality[rows],
                              self.cost_usd[rows], self.report, self.digest)


# JSON may escape half of a UTF-16 pair ("\ud83d" of a cut emoji, as JavaScript tools write); Python keeps it
# as a lone surrogate, which no UTF-8 encoder (the tokenizer's, Triton's) accepts.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def read_prompts(path: str | Path, report: LoadReport | None = None) -> list[Prompt]:
    """Prompts in the canonical `prompts.jsonl` form: `{"id", "text", "category"?}` a line. A lone surrogate
    in a text becomes U+FFFD (the replacement character), counted in `report`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such prompts file")
    prompts: list[Prompt] = []
    seen: set[str] = set()
    with path.open("rb") as f:                 # bytes, so that a line that is not UTF-8 can be named
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")     # a BOM, as Windows tools write
            except UnicodeDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: not UTF-8 text (byte {e.start}: {e.reason})") from e
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            pid, text = obj.get("id"), obj.get("text")
            if not isinstance(pid, (str, int)) or isinstance(pid, bool):
                raise DatasetError(f"{path}:{lineno}: field 'id' must be a string, got {pid!r}")
            if not isinstance(text, str):
                raise DatasetError(f"{path}:{lineno}: field 'text' must be a string, got {type(text).__name__}")
            pid = str(pid)
            if _LONE_SURROGATE.search(pid):
                pid = _LONE_SURROGATE.sub("\ufffd", pid)
            if pid in seen:
                raise DatasetError(f"{path}:{lineno}: duplicate id {pid!r}")
            seen.add(pid)
            category = str(obj.get("category") or "")
            if _LONE_SURROGATE.search(text) or _LONE_SURROGATE.search(category):
                text, category = _LONE_SURROGATE.sub("\ufffd", text), _LONE_SURROGATE.sub("\ufffd", category)
                if report is not None:
                    report.lone_surrogates += 1
                    report.messages.append(f"{path.name}:{lineno}: a lone UTF-16 surrogate, read as U+FFFD")
            prompts.append(Prompt(pid, text, category))
    return prompts


def _read_pool(path: Path) -> list[PoolModel]:
    if not path.is_file():
        raise DatasetError(f"{path}: no such models file")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        entries = spec["models"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: expected {{\"models\": [{{\"name\", ...}}]}} ({e})") from e
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: 'models' must be a list of {{\"name\", ...}} objects, got "
                           f"{type(entries).__name__}")

    def price(entry: dict, key: str) -> float | None:
        value = entry.get(key)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise DatasetError(f"{path}: model {entry.get('name')!r}: {key} must be a non-negative number "
                               f"or null, got {value!r}")
        return float(value)

    pool = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise DatasetError(f"{path}: every model needs a non-empty string 'name', got {entry!r}")
        problem = model_name_problem(entry["name"])
        if problem:
            raise DatasetError(f"{path}: model name {entry['name']!r} {problem}")
        pool.append(PoolModel(entry["name"], price(entry, "input_usd_per_mtok"), price(entry, "output_usd_per_mtok"),
                              price_note=str(entry.get("price_note") or "")))
    names = [m.name for m in pool]
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: duplicate model names {sorted({n for n in names if names.count(n) > 1})}")
    if not pool:
        raise DatasetError(f"{path}: the pool is empty")
    return pool


def _read_matrix(path: Path, model_names: list[str], row_of: dict[str, int], report: LoadReport,
                 *, kind: str) -> np.ndarray:
    """A `id,<model>...` table joined on id into (n_prompts, n_models); unknown cells stay NaN."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such {kind} file")
    out = np.full((len(row_of), len(model_names)), np.nan, dtype=np.float32)
    with path.open(newline="", encoding="utf-8-sig") as f:      # -sig: a BOM (Excel's) is not part of "id"
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0] != "id":
            raise DatasetError(f"{path}: the header must start with 'id', got {header[:3] if header else header}")
        columns = header[1:]
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise DatasetError(f"{path}: model column(s) {repeated[:8]} appear more than once in the header")
        missing = [n for n in model_names if n not in columns]
        extra = [n for n in columns if n not in model_names]
        if missing or extra:
            raise DatasetError(f"{path}: model columns do not match models.json: "
                               f"missing {missing}, not in models.json {extra}")
        col_index = [model_names.index(c) for c in columns]
        seen_rows: set[int] = set()
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                report.malformed_rows += 1
                report.messages.append(f"{path.name}:{lineno}: {len(row)} fields, expected {len(header)}")
                continue
            r = row_of.get(row[0])
            if r is None:
                report.unknown_ids += 1
                continue
            if r in seen_rows:       # which of two rows is right cannot be told: the first stays
                report.duplicate_rows += 1
                report.messages.append(f"{path.name}:{lineno}: a second row for id {row[0][:80]!r}, ignored")
                continue
            seen_rows.add(r)
            for j, cell in zip(col_index, row[1:]):
                cell = cell.strip()
                if not cell:
                    if kind == "scores":
                        report.blank_scores += 1
                    else:
                        report.blank_costs += 1
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    value = math.nan
                ok = math.isfinite(value) and value >= 0 and (kind != "scores" or value <= 1)
                if not ok:
                    raise DatasetError(f"{path}:{lineno}: model {model_names[j]!r}: {kind[:-1]} {cell!r} is "
                                       f"not a number in {'[0, 1]' if kind == 'scores' else '[0, inf)'}")
                out[r, j] = value
    return out


def dataset_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("prompts.jsonl", "scores.csv", "costs.csv", "models.json"):
        p = folder / name
        if p.is_file():
            h.update(name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def load_dataset(folder: str | Path, *, require_scores: bool = True) -> RoutingDataset:
    """Reads a canonical dataset folder. Prompts with no known score at all are dropped and counted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such dataset folder")
    report = LoadReport()
    prompts = read_prompts(folder / "prompts.jsonl", report)
    pool = _read_pool(folder / "models.json")
    names = [m.name for m in pool]
    row_of = {p.id: i for i, p in enumerate(prompts)}
    quality = _read_matrix(folder / "scores.csv", names, row_of, report, kind="scores")
    cost = _read_matrix(folder / "costs.csv", names, row_of, report, kind="costs")
    ds = RoutingDataset(prompts, pool, quality, cost, report, dataset_digest(folder))
    if require_scores:
        known = ~np.all(np.isnan(quality), axis=1)
        report.prompts_without_scores = int((~known).sum())
        if report.prompts_without_scores:
            ds = ds.subset(np.flatnonzero(known))
            ds.report = report
        if len(ds) == 0:
            raise DatasetError(f"{folder}: no prompt has a known score")
        unscored = [n for n, known in zip(names, (~np.isnan(ds.quality)).any(axis=0)) if not known]
        if unscored:              # trained on, its predictions would be its prior's guess, routed on as a score
            report.models_without_scores = len(unscored)
            report.messages.append(f"scores.csv: no known score for {unscored[:8]}"
                                   f"{f' and {len(unscored) - 8} more' if len(unscored) > 8 else ''}: their "
                                   f"predictions carry no information; label some prompts or leave them out")
    return ds
