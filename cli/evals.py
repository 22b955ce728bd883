"""`routoo eval`, `routoo eval-ceiling` and `routoo eval-add-model`: the routing evaluation harness
(evals/harness.py, evals/ceiling.py, evals/add_model.py) on the command line. Registered by
cli/main.py through `add_commands(subparsers)`."""

from __future__ import annotations

import argparse
import time

from cli.arg_types import count
from evals.config import EvalConfig

_DEFAULTS = EvalConfig()


def _pool_list(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--pool needs at least one model name")
    return names


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from e
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--sizes must be comma-separated integers, got {value!r}") from e
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError(f"--sizes must be integers >= 2, got {value!r}")
    return sizes


def _print_quality(report: dict) -> None:
    print(f"\n{'quality prediction on test':<40}{'log loss':>9}{'ECE':>8}{'AUROC':>8}")
    for name, m in report["quality_metrics"].items():
        print(f"{name[:39]:<40}{m['log_loss']:>9.4f}{m['ece']:>8.4f}{m['auroc_mean']:>8.4f}")


def _artifact_and_splits(args: argparse.Namespace):
    """(artifact, train_ds, test_ds) for the eval commands: --artifact (default: the committed default), --train,
    --test."""
    from predictor_service.artifact import Artifact, default_artifact_path
    from training.data import load_dataset

    return (Artifact.load(args.artifact or default_artifact_path()), load_dataset(args.train),
            load_dataset(args.test))


def cmd_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from predictor_service.artifact import default_artifact_path
    from evals.harness import evaluate
    from evals.report import format_tables, plot_frontiers, write_json

    started = time.perf_counter()
    artifact, train_ds, test_ds = _artifact_and_splits(args)
    print(f"train: {len(train_ds)} prompts ({train_ds.report.summary()}); "
          f"test: {len(test_ds)} prompts ({test_ds.report.summary()}); "
          f"artifact: {args.artifact or default_artifact_path()} ({artifact.manifest.encoder} encoder)")
    for side, ds in (("train", train_ds), ("test", test_ds)):
        print("".join(f"  {side}: {line}\n" for line in ds.report.details()), end="")
    config = replace(_DEFAULTS, ref_model=args.ref or None, tfidf=not args.skip_tfidf, seed=args.seed)
    report = evaluate(train_ds, test_ds, artifact, pool=args.pool, config=config)
    print(f"\nkNN: k = {report['knn']['k']}, chosen by frontier AUC on {config.knn_holdout:.0%} of train")
    _print_quality(report)
    print(format_tables(report))
    if args.out_json:
        print(f"\nJSON: {write_json(report, args.out_json)}")
    if args.plot:
        print(f"plot: {plot_frontiers(report, args.plot)}")
    print(f"evaluation took {time.perf_counter() - started:.0f} s")
    return 0


def cmd_eval_ceiling(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from evals.ceiling import informed_ceilings
    from evals.report import format_tables, write_json
    from evals.scorer_metric import format_scorer_table

    started = time.perf_counter()
    artifact, train_ds, test_ds = _artifact_and_splits(args)
    config = replace(_DEFAULTS, ref_model=args.ref or None, seed=args.seed)
    report = informed_ceilings(train_ds, test_ds, artifact, probes=args.probes, n_probes=args.n_probes,
                               config=config)
    print(f"probes (out of the pool, their outcomes are features): {', '.join(report['probes'])}")
    _print_quality(report)
    print(format_tables(report))
    for pool, rows in report["scorer_metric"].items():
        print(format_scorer_table(f"held-out scorer's metric, {pool}", rows))
    if args.out_json:
        print(f"\nJSON: {write_json(report, args.out_json)}")
    print(f"ceilings took {time.perf_counter() - started:.0f} s")
    return 0


def cmd_eval_add_model(args: argparse.Namespace) -> int:
    from predictor_service.artifact import Artifact
    from training.data import load_dataset
    from evals.add_model import add_model_experiment, format_add_model
    from evals.report import write_json

    started = time.perf_counter()
    train_ds, test_ds = load_dataset(args.train), load_dataset(args.test)
    full = Artifact.load(args.artifact) if args.artifact else None
    result = add_model_experiment(train_ds, test_ds, args.model, encoder_name=args.encoder, full_artifact=full,
                                  sizes=args.sizes, repeats=args.repeats, seed=args.seed)
    print(format_add_model(result))
    if args.out_json:
        print(f"JSON: {write_json(result, args.out_json)}")
    print(f"experiment took {time.perf_counter() - started:.0f} s")
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("eval", help="accuracy/cost frontiers of the router against baselines")
    p.add_argument("--train", required=True, help="dataset folder the baselines are fitted on (canonical format)")
    p.add_argument("--test", required=True, help="dataset folder to evaluate on")
    p.add_argument("--artifact", help="predictor artifact (default: the committed default artifact)")
    p.add_argument("--pool", type=_pool_list, help="comma-separated models to route among (default: all "
                   "that the artifact and the test data share); the open-weights subset is evaluated too")
    p.add_argument("--ref", default=_DEFAULTS.ref_model,
                   help=f"extra reference model (default {_DEFAULTS.ref_model}; '' for none)")
    p.add_argument("--out-json", help="write every figure and frontier point as JSON")
    p.add_argument("--plot", help="write a PNG of the frontiers with the single models labelled")
    p.add_argument("--skip-tfidf", action="store_true", help="skip the TF-IDF baseline (~1-2 min faster)")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("eval-ceiling", help="how much of the gap routers recover that are told the "
                              "category or other models' outcomes (bounds what prompt features can buy)")
    p.add_argument("--train", required=True, help="dataset folder the told routers are fitted on")
    p.add_argument("--test", required=True, help="dataset folder to evaluate on")
    p.add_argument("--artifact", help="predictor artifact (default: the committed default artifact)")
    p.add_argument("--probes", type=_pool_list, help="comma-separated models taken out of the pool whose "
                   "outcomes are told (default: the --n-probes cheapest fully labelled ones, "
                   "besides the best single model and --ref)")
    p.add_argument("--n-probes", type=_positive, default=8, help="how many default probes (default 8)")
    p.add_argument("--ref", default=_DEFAULTS.ref_model,
                   help=f"extra reference model (default {_DEFAULTS.ref_model}; '' for none)")
    p.add_argument("--out-json", help="write every figure and frontier point as JSON")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    p.set_defaults(func=cmd_eval_ceiling)

    p = subparsers.add_parser("eval-add-model", help="drop a model from training, add it back from n labelled "
                              "prompts with add-model, compare its AUROC with full training")
    p.add_argument("--train", required=True, help="training dataset folder")
    p.add_argument("--test", required=True, help="dataset folder the AUROC is measured on")
    p.add_argument("--model", required=True, help="the model to drop and add back (a mid-priced one)")
    p.add_argument("--encoder", choices=["static", "minilm"], default="static")
    p.add_argument("--artifact", help="artifact trained with all data, as the reference (default: train one)")
    p.add_argument("--sizes", type=_sizes, default=(50, 200, 1000), help="labelled prompt counts (default "
                   "50,200,1000; all labelled prompts are always added as a last row)")
    p.add_argument("--repeats", type=count, default=5, help="random draws per size (mean and std reported)")
    p.add_argument("--out-json", help="write the results as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_eval_add_model)
