"""What the benchmark feeds its targets: the artifact per encoder (the committed default, or a minilm one
trained once and cached) and the prompts (MMLU-Pro dev, or a synthetic stand-in)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from bench.targets import ENCODERS, TargetUnavailable

log = logging.getLogger(__name__)

# Where the minilm artifact the benchmark trains is cached (`ROUTOO_BENCH_ARTIFACTS` overrides it).
DEFAULT_ARTIFACT_CACHE = Path.home() / ".cache" / "routoo" / "bench-artifacts"
DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mmlu-pro"


def artifact_cache() -> Path:
    return Path(os.environ.get("ROUTOO_BENCH_ARTIFACTS") or DEFAULT_ARTIFACT_CACHE)


def ensure_artifact(encoder: str, *, data_root: Path = DATA_ROOT, show_progress: bool = True) -> Path:
    """The artifact folder for `encoder`: the committed default for `static`; for `minilm`, one trained on
    mmlu-pro/train once (~3-5 min of MiniLM embeddings on 2 cores) and cached.

    Raises TargetUnavailable when it would have to train one and the data set is not there.
    """
    from predictor_service.artifact import MANIFEST, default_artifact_path

    if encoder == "static":
        return default_artifact_path()
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {list(ENCODERS)}")
    folder = artifact_cache() / encoder
    if (folder / MANIFEST).is_file():
        return folder
    train_dir, dev_dir = data_root / "train", data_root / "dev"
    if not (train_dir / "prompts.jsonl").is_file():
        raise TargetUnavailable(f"no {encoder} artifact in {folder} and no training data in {train_dir} to "
                                f"train one; skipping the {encoder} encoder")
    from training.data import load_dataset
    from training.fit import train

    log.warning("training a %s artifact into %s (once; minutes on 2 cores)", encoder, folder)
    dev = load_dataset(dev_dir) if (dev_dir / "prompts.jsonl").is_file() else None
    artifact, _ = train(load_dataset(train_dir), dev, encoder_name=encoder, show_progress=show_progress)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    artifact.save(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


def default_prompts_path() -> Path:
    return DATA_ROOT / "dev" / "prompts.jsonl"


def load_prompts(path: Path | None, *, limit: int = 2000, seed: int = 0) -> list[str]:
    """Prompt texts from a canonical prompts.jsonl (MMLU-Pro dev by default), shuffled with a fixed seed.

    Without the data set, a fixed synthetic set of MMLU-sized prompts (~600 characters) stands in and the
    run says so.
    """
    from training.data import read_prompts

    path = path or default_prompts_path()
    rng = np.random.default_rng(seed)
    if path.is_file():
        texts = [p.text for p in read_prompts(path) if p.text.strip()]
    else:
        log.warning("%s not found: using synthetic prompts", path)
        words = ["energy", "momentum", "contract", "enzyme", "integral", "market", "court", "protein",
                 "voltage", "theorem", "tariff", "neuron", "which", "of", "the", "following", "is"]
        texts = [" ".join(rng.choice(words, size=int(rng.integers(40, 160)))) + "?" for _ in range(limit)]
    order = rng.permutation(len(texts))[:limit]
    return [texts[i] for i in order]
