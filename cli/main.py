"""`routoo`: the command line. Predictor commands live here; serving, selector, gateway and evaluation
commands live in this package's other modules, each adding its own (`add_commands(subparsers)`)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import sys

from cli.arg_types import count
from predictor_service.contract import PREDICTOR_MODEL

os.environ.setdefault("HF_HUB_OFFLINE", "1")           # models come from packages, never from a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _fail(message: str) -> int:
    print(f"routoo: error: {message}", file=sys.stderr)
    return 2


def cmd_prepare(args: argparse.Namespace) -> int:
    from predictor_service.encoders import build_static_table

    path = build_static_table(force=args.force, dtype="float32" if args.float32 else "float16")
    print(f"static embedding table ready: {path} (train on it with `routoo train --static-table {path}`)")
    return 0


def cmd_upgrade_artifact(args: argparse.Namespace) -> int:
    from predictor_service.artifact import ArtifactError, upgrade_v1

    try:
        artifact = upgrade_v1(args.artifact, args.out)
    except ArtifactError as e:
        return _fail(str(e))
    print(f"format {artifact.manifest.format_version} artifact written to {args.out}")
    return 0


def _print_metrics_table(rows: dict[str, dict]) -> None:
    print(f"\n{'dev metrics':<28}{'log loss':>10}{'ECE':>8}{'AUROC':>8}")
    for name, m in rows.items():
        print(f"{name:<28}{m['log_loss']:>10.4f}{m['ece']:>8.4f}{m['auroc_mean']:>8.4f}")


def _window_arg(value: str):
    """"auto", "256" -> (256, 0) or "64+192" -> (256, 192): (max_tokens, tail_tokens)."""
    if value == "auto":
        return value
    head, plus, tail = value.partition("+")
    try:
        window = (int(head) + int(tail or 0), int(tail or 0))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window must be auto, HEAD or HEAD+TAIL token counts, got {value!r}")
    if window[0] < 1 or min(int(head), window[1]) < 0:
        raise argparse.ArgumentTypeError(f"--window needs at least one token and no negative count, got {value!r}")
    return window


def cmd_train(args: argparse.Namespace) -> int:
    from evals.recipe import describe_choice, train_choosing_recipe
    from training.data import load_dataset
    from training.dev_report import baseline_record, dev_rows
    from training.fit import TrainConfig

    if args.lexical == "on" and args.encoder != "static":   # fail before the training, not after it
        raise ValueError(f"--lexical on needs the static encoder (the part reads its token ids), not {args.encoder!r}")
    train_ds = load_dataset(args.data)
    dev_ds = load_dataset(args.dev) if args.dev else None
    print(f"train: {len(train_ds)} prompts x {len(train_ds.model_names)} models ({train_ds.report.summary()})")
    print("".join(f"  {line}\n" for line in train_ds.report.details()), end="")
    if dev_ds is not None:
        print(f"dev:   {len(dev_ds)} prompts ({dev_ds.report.summary()})")
        print("".join(f"  {line}\n" for line in dev_ds.report.details()), end="")
    config = TrainConfig(hidden=args.hidden, seed=args.seed, max_epochs=args.max_epochs)
    artifact, result = train_choosing_recipe(
        train_ds, dev_ds, window=args.window, head=args.head, tfidf_check=not args.skip_tfidf,
        lexical=args.lexical, prior_shrink=args.prior_shrink, encoder_name=args.encoder, config=config,
        static_table=args.static_table, table_storage=args.table_storage)
    print("\n".join(describe_choice(result)))
    rows = None
    if dev_ds is not None:
        label = f"routoo head ({args.encoder})"
        rows = dev_rows(train_ds, dev_ds, result["head"], label, tfidf=not args.skip_tfidf)
        artifact.manifest.dev_metrics["baselines"] = baseline_record(rows, label)
    artifact.save(args.out)        # once, with the dev report in its manifest
    print(f"artifact written to {args.out} (inverse temperature {artifact.manifest.inv_temperature:.3f}, "
          f"{artifact.manifest.training['epochs']} epochs)")
    if rows is not None:
        _print_metrics_table(rows)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from predictor_service.artifact import default_artifact_path
    from training.data import LoadReport, read_prompts

    report = LoadReport()
    prompts = read_prompts(args.prompts, report)
    print("".join(f"{line}\n" for line in report.details()), end="", file=sys.stderr)
    texts = [p.text for p in prompts]
    if args.server:
        from predictor_service.predictor import PromptError, check_prompt
        from predictor_service.remote import score_remote

        # Checked here as the server checks them: its refusal names a row of a 64-prompt chunk, not the id.
        for prompt in prompts:
            try:
                check_prompt(prompt.text)
            except PromptError as e:
                return _fail(f"{args.prompts}: prompt {prompt.id!r}: {e} (the predictor would refuse it)")

        names, quality, _ = score_remote(args.server, texts, model=args.model_name)
    else:
        from predictor_service.predictor import Predictor

        predictor = Predictor.load(args.artifact or default_artifact_path())
        names = predictor.model_names
        quality, _ = predictor.predict(texts)
    with (open(args.out, "w", newline="") if args.out != "-" else contextlib.nullcontext(sys.stdout)) as out:
        writer = csv.writer(out)
        writer.writerow(["id", *names])
        for prompt, row in zip(prompts, quality):
            writer.writerow([prompt.id, *(f"{v:.6f}" for v in row)])
    if args.out != "-":
        print(f"scored {len(prompts)} prompts x {len(names)} models -> {args.out}", file=sys.stderr)
    return 0


def cmd_add_model(args: argparse.Namespace) -> int:
    import numpy as np

    from predictor_service.artifact import Artifact, default_artifact_path
    from training.data import load_dataset
    from training.add_model import add_model

    artifact = Artifact.load(args.artifact or default_artifact_path())
    ds = load_dataset(args.data)
    if args.model not in ds.model_names:
        return _fail(f"model {args.model!r} is not in {args.data}; it has {ds.model_names}")
    j = ds.model_names.index(args.model)
    rows = np.flatnonzero(~np.isnan(ds.quality[:, j]))
    if args.limit:
        rows = np.random.default_rng(args.seed).permutation(rows)[: args.limit]
    pool_model = ds.pool[j]
    new = add_model(artifact, args.model, [pool_model.input_usd_per_mtok, pool_model.output_usd_per_mtok],
                    [ds.prompts[i].text for i in rows], ds.quality[rows, j], ds.cost_usd[rows, j])
    new.save(args.out)
    print(f"added {args.model!r} from {len(rows)} labelled prompts -> {args.out} "
          f"({len(new.manifest.model_names)} models)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routoo", description="Cost-aware LLM routing (Routoo).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="distil a new static embedding table from the MiniLM wheel (offline; "
                       "only for training new tables: artifacts carry theirs)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.add_argument("--float32", action="store_true", help="keep the table in fp32 (default: model2vec's fp16)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("upgrade-artifact", help="convert a format-1 artifact (no table inside) to format 2")
    p.add_argument("artifact", help="the format-1 artifact folder")
    p.add_argument("--out", required=True, help="folder to write the format-2 artifact to")
    p.set_defaults(func=cmd_upgrade_artifact)

    p = sub.add_parser("train", help="train a predictor artifact on a canonical dataset")
    p.add_argument("--data", required=True, help="training dataset folder (canonical format)")
    p.add_argument("--dev", help="dev dataset folder: only for the reported metrics (no training step reads it)")
    p.add_argument("--encoder", choices=["static", "minilm"], default="static")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--hidden", type=count, default=256,
                   help="hidden width of the merged head, shared by the ensemble members (a multiple of 4)")
    p.add_argument("--max-epochs", type=count, default=200)
    p.add_argument("--window", type=_window_arg, default="auto",
                   help="tokens of a long prompt the encoder reads: HEAD (the first HEAD), HEAD+TAIL (the first "
                        "HEAD and the last TAIL; few-shot and RAG prompts put the question last), or auto "
                        "(default: the best of 256, 64+192 and 0+256 by out-of-fold train frontier AUC, "
                        "trained only where prompts pass 256 tokens; the choice is in the manifest)")
    p.add_argument("--head", default="auto", metavar="auto|NAME",
                   help="head settings: auto (default: the default head unless another of "
                        "evals/head_search.py's candidates (half-width, narrow-regularised, smoothed) "
                        "clearly beats it out-of-fold on train; the choice is in the manifest) or one by name")
    p.add_argument("--lexical", choices=["auto", "on", "off"], default="auto",
                   help="a lexical part (per-model weights over token and hashed bigram ids) beside the head: "
                        "auto (default) keeps it only where train-only cross-validation says it helps; the "
                        "decision and its out-of-fold figures are printed and in the manifest")
    p.add_argument("--prior-shrink", choices=["auto", "off"], default="off",
                   help="pull the served quality toward each model's train mean: auto picks the share by "
                        "train-only cross-validation (one-standard-error rule, evals/prior_shrink.py) and records "
                        "it in the manifest; off (default: on mmlu-pro it cost the MiniLM head 0.002 dev AUC and "
                        "calibration, docs/evaluation.md \"Prior shrink\")")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-tfidf", action="store_true",
                   help="skip the TF-IDF baseline on dev and its out-of-fold check on train (faster)")
    p.add_argument("--static-table", metavar="DIR",
                   help="static encoder's table: an artifact folder, or a table `routoo prepare` wrote "
                        "(default: the committed default artifact's)")
    p.add_argument("--table-storage", choices=["fp32", "fp16", "int8"],
                   help="how the artifact stores the table; the head is trained on the stored values "
                        "(default: as the source stores it)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score", help="predict per-model quality for prompts.jsonl -> scores.csv shape")
    p.add_argument("prompts", help="prompts in the canonical prompts.jsonl form")
    p.add_argument("--artifact", help="artifact folder (default: the committed default artifact)")
    p.add_argument("--server", help="HOST:PORT of a running Triton (gRPC) to ask instead of computing here")
    p.add_argument("--model-name", default=PREDICTOR_MODEL, help="Triton model name with --server")
    p.add_argument("--out", default="-", help="CSV to write (default: stdout)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("add-model", help="add a pool model from its labelled prompts, others unchanged")
    p.add_argument("--model", required=True, help="model column name in the dataset")
    p.add_argument("--data", required=True, help="dataset folder with that model's labels")
    p.add_argument("--artifact", help="artifact to extend (default: the committed default)")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--limit", type=int, default=0, help="use at most this many labelled prompts")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_add_model)

    from cli import evals, gateway, predictor_serving, selector, services

    for module in (predictor_serving, services, selector, gateway, evals):
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from predictor_service.artifact import ArtifactError
    from selector.server import StartupError
    from training.data import DatasetError

    try:
        return int(args.func(args) or 0)
    except (DatasetError, ArtifactError, StartupError, ValueError) as e:
        return _fail(str(e))
    except OSError as e:       # a missing input, or an --out that cannot be written (read-only, a directory)
        return _fail(f"{e.filename}: {e.strerror or e}" if e.filename else str(e))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
