"""The ``rl-div`` command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from rl_div.bench import SECTIONS as BENCH_SECTIONS
from rl_div.config import ConfigError, config_help, load_config
from rl_div.run.stops import RunStopped


def _train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"cluster.address={args.address}")
    cfg = load_config(args.config, overrides)
    from rl_div.config.checks import check_inputs
    from rl_div.run.checkpoint import claim_output_dir

    check_inputs(cfg)  # the Trainer checks again; here it fails before Ray and transformers are imported
    from rl_div.train.prompts import check_chat_rendering, load_splits

    # Unusable rows, empty sets, evaluation prompts seen in training: refused before Ray starts (the
    # Trainer loads the prompts again; load_config already imported torch, so this costs the read only).
    train_set, eval_set = load_splits(cfg.data, cfg.run.seed)
    if os.path.isdir(cfg.model.path):  # chat-format prompts need the policy's chat template
        check_chat_rendering(eval_set.records + train_set.records, cfg.model.path, cfg)
    deleted = claim_output_dir(cfg.run.output_dir, args.resume, args.overwrite)  # a run there needs a flag
    if deleted:
        print(f"--overwrite: deleted {', '.join(deleted)} in {cfg.run.output_dir}")
    if args.resume:  # a changed config is refused (or recorded); a finished run is a no-op
        from rl_div.run.resume import resume_preflight

        if (finished := resume_preflight(cfg, args.allow_config_change)) is not None:
            print(finished)
            return 0
    # Start Ray's processes while the driver imports torch and the trainer (seconds each).
    importer = threading.Thread(target=importlib.import_module, args=("rl_div.train.loop",), daemon=True)
    importer.start()
    import ray

    from rl_div.cluster.actors import init_ray

    started_ray = not ray.is_initialized()
    try:
        init_ray(cfg)
        importer.join()
        from rl_div.train.console import console_logging
        from rl_div.train.loop import train

        with console_logging():  # log lines through the progress bar
            out = train(cfg, resume=args.resume, overwrite=args.overwrite)
    finally:
        if started_ray:  # a refused or failed run leaves no Ray behind in a calling process (tests, notebooks)
            ray.shutdown()
    print(f"run finished: metrics in {out / 'metrics.jsonl'}, evaluations in {out / 'eval'}")
    _print_results(out)
    return 0


def _print_results(run_dir: Path) -> None:
    """The final evaluation against the first, and the single-run report (as ``rl-div report RUN``)."""
    from rl_div.report import build_report
    from rl_div.report.run_table import final_table

    table = final_table(run_dir)
    if table is None:
        print("no evaluation in this run (eval.at_start/eval.at_end/eval.every are off): no results table")
        return
    print(table)
    try:
        files = build_report([run_dir])  # titled '<run.name>: single run'
    except (ValueError, OSError) as err:  # the run is done and saved: a report failure must not hide that
        print(f"report not written ({type(err).__name__}: {err}); rl-div report {run_dir} retries it")
        return
    print(f"report: {files['report_md']} and {files['report_html']} (plots beside them)")


def _bootstrap(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, list(args.overrides))
    from rl_div.train.model_path import resolve_model_path

    if cfg.model.path not in ("bootstrap", "tiny_qwen"):
        print(f"model.path is {cfg.model.path!r}: nothing to bootstrap")
        return 0
    print(resolve_model_path(cfg))
    return 0


def _split_seeds(values: list[str] | None, overrides: list[str]) -> list[int] | None:
    """``--seeds 0 1 train.steps=2``: argparse gives every word after --seeds to it; the key=value ones
    are overrides (moved to ``overrides``), the rest must be integers."""
    if values is None:
        return None
    seeds = []
    for value in values:
        if "=" in value:
            overrides.append(value)
        elif value.lstrip("-").isdigit():
            seeds.append(int(value))
        else:
            raise ConfigError(f"--seeds: {value!r} is neither an integer nor a key=value override")
    return seeds


def _compare(args: argparse.Namespace) -> int:
    from rl_div.experiments.compare import compare

    # CONFIG... may be followed by key=value overrides (a word with '=' that is not an existing file).
    configs = [c for c in args.configs if "=" not in c or os.path.exists(c)]
    overrides = [c for c in args.configs if c not in configs]
    seeds = _split_seeds(args.seeds, overrides) or [0]
    overrides += list(args.overrides)
    if not configs:
        raise ConfigError("compare: no CONFIG given")
    if args.address:
        overrides.append(f"cluster.address={args.address}")
    compare(configs, seeds, args.out, overrides, jobs=args.jobs, report=not args.no_report, baseline=args.baseline)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rl_div.experiments.evaluate import print_summary, run_eval

    overrides = list(args.overrides)
    seeds = _split_seeds(args.seeds, overrides)
    _check_model_arg(args.model, "MODEL", args.config, overrides)
    if args.reference and args.reference.lower() != "none":
        _check_model_arg(args.reference, "--reference")
    if args.benchmarks:
        from rl_div.experiments.benchmark_eval import print_benchmarks, run_benchmark_eval

        if args.strategy:
            overrides.append(f"benchmarks.strategy={args.strategy}")

        print_benchmarks(run_benchmark_eval(args.model, args.benchmarks.split(","), n=args.n, limit=args.limit,
                                            config=args.config, reference=args.reference,
                                            seed=int(seeds[0]) if seeds else None, out=args.out, overrides=overrides))
        return 0
    files = run_eval(args.model, n=args.n or 64, config=args.config, reference=args.reference, seeds=seeds,
                     out=args.out, overrides=overrides)
    print_summary(files["summary_json"])
    print(f"\nreport: {files['report_md']} and {files['report_html']}; data: {files['metrics_tidy_csv']}")
    return 0


def _check_model_arg(path: str, what: str, config: str | None = None, overrides: list[str] | None = None) -> None:
    """One line (ConfigError) for a model path that does not exist, is no model, run or checkpoint, asks
    for remote code by its own word (a run folder's config.yaml: checked first, since it is the security
    refusal), or has no loadable tokenizer, before anything starts."""
    from rl_div.experiments.evaluate import eval_config, resolve_target
    from rl_div.models.loading import tokenizer_problem

    if not os.path.exists(path):
        raise ConfigError(f"{what} {path!r} does not exist")
    try:
        target = resolve_target(path)
    except FileNotFoundError as err:
        raise ConfigError(f"{what}: {err}") from None
    if overrides is not None:
        eval_config(target, config, overrides)
    model_dir = target.model_dir
    if (problem := tokenizer_problem(model_dir)) is not None:
        raise ConfigError(f"{what} {path!r}: {problem}")


def _report(args: argparse.Namespace) -> int:
    from rl_div.report import build_report

    for path in args.paths:
        if not os.path.isdir(path):
            raise ConfigError(f"report: {path!r} {'is not a folder' if os.path.exists(path) else 'does not exist'}")
    try:
        files = build_report(args.paths, args.out, title=args.title, baseline=args.baseline)
    except FileNotFoundError as err:  # a folder without runs
        raise ConfigError(f"report: {err}") from None
    for name, path in files.items():
        print(f"{name:>18}: {path}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from rl_div.experiments.evaluate import resolve_target
    from rl_div.models.layer_restore import restore_layers

    try:  # a checkpoint step folder or a run folder names its model as in rl-div eval
        base, tuned = resolve_target(args.base).model_dir, resolve_target(args.tuned).model_dir
        info = restore_layers(base, tuned, args.layers, args.out, prefix=args.prefix, overwrite=args.overwrite)
    except (ValueError, OSError) as err:  # bad --layers, incompatible models, missing or existing folders
        raise ConfigError(f"restore: {err}") from None
    print(f"wrote {args.out}: layers {info['layers']} of {info['num_layers']} ({info['prefix']}.*) from "
          f"{args.base}, the rest from {args.tuned}; evaluate with: rl-div eval {args.out} --reference {args.base}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.methods and args.interleave:
        from rl_div.bench.method_steps import bench_method_steps, print_method_steps

        model = args.models if args.models in ("demo", "20m") else "20m"
        return _write_bench(bench_method_steps(methods=tuple(args.methods.split(",")), rounds=args.pairs, model=model),
                            print_method_steps, args.out, "runs/bench_method_steps.json")
    if args.methods:
        from rl_div.bench.methods import bench_methods, print_methods

        model = args.models if args.models in ("demo", "20m") else "20m"
        return _write_bench(bench_methods(methods=tuple(args.methods.split(",")), rounds=args.pairs, model=model,
                                          steps=args.steps_20m), print_methods, args.out, "runs/bench_methods.json")
    if args.vs_trl:
        from rl_div.bench.vs_trl import bench_vs_trl, print_vs_trl

        return _write_bench(bench_vs_trl(models=tuple(args.models.split(",")), pairs=args.pairs, steps=args.steps,
                                         steps_20m=args.steps_20m, baseline=args.baseline,
                                         micro_batches=tuple(int(k) for k in args.micro_batches.split(","))),
                            print_vs_trl, args.out, "runs/bench_vs_trl.json")
    from rl_div.bench.run import run_bench

    run_bench(quick=args.quick, out=args.out, sections=args.sections, baseline=args.baseline)
    return 0


def _write_bench(result: dict, show: Callable[[dict], None], out: str, default_out: str) -> int:
    """Print a bench section's result and write its JSON (to default_out unless --out was given)."""
    import json

    show(result)
    path = Path(out if out != "runs/bench.json" else default_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")
    return 0


def _config_help(args: argparse.Namespace) -> int:
    from rl_div.config.method_params import method_parameters_help

    print("\n".join([*config_help(), *method_parameters_help()]))
    return 0


BASELINE_HELP = ("Variant (run.name) the others are compared with in paired differences (default: the first "
                 "variant, e.g. the first CONFIG of compare).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rl-div", description="Diversity-aware RLVR fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="Run RLVR training through Ray.")
    p.add_argument("config", help="YAML config file (see configs/).")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algo=arm train.steps=10")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start locally).")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint.")
    p.add_argument("--allow-config-change", action="store_true",
                   help="With --resume: accept a config that differs from the run's saved one beyond train.steps, "
                   "eval/checkpoint cadence, tracking and cluster; the change is recorded in config_history.jsonl.")
    mode.add_argument("--overwrite", action="store_true",
                      help="Delete the outputs of a run already in run.output_dir and start afresh "
                      "(without this or --resume an existing run folder is refused).")
    p.set_defaults(func=_train)

    p = sub.add_parser("bootstrap", help="Pretrain (or find cached) the tiny demo base model; print its path.")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_bootstrap)

    p = sub.add_parser(
        "compare", help="Train every config (variant) x seed on the same prompts and eval sets; write a report.",
        description="Runs OUT/<run.name>/seed<k> for every config and seed (skipping finished runs, resuming "
        "interrupted ones), then writes OUT/report: tidy CSV/JSON, pass@k and training-curve PNGs, report.md/html.")
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML configs; key=value overrides may follow.")
    p.set_defaults(overrides=[])
    p.add_argument("--seeds", nargs="+", help="Seeds (run.seed) for every variant (default: 0).")
    p.add_argument("--out", default="runs/compare", help="Output folder (default: runs/compare).")
    p.add_argument("--jobs", type=int, default=1,
                   help="Runs at once as separate processes (default 1: in turn, in this process).")
    p.add_argument("--address", help="Ray cluster address for every run.")
    p.add_argument("--no-report", action="store_true", help="Only train; build the report later (rl-div report).")
    p.add_argument("--baseline", help=BASELINE_HELP)
    p.set_defaults(func=_compare)

    p = sub.add_parser(
        "eval", help="pass@k (k = 1, 2, 4, ..., n), diversity and collapse of a model or checkpoint.",
        description="MODEL: a model dir, a run's checkpoints/step_X (or its policy/), or a run dir (latest "
        "checkpoint). Uses the Trainer's evaluation; writes OUT/report like rl-div report.")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. data.num_eval_prompts=64")
    p.add_argument("--n", type=int, help="Samples per held-out problem (default 64; with --benchmarks each "
                   "benchmark's own n).")
    p.add_argument("--config", help="Config (data, sampling); default: the run's config.yaml, else defaults.")
    p.add_argument("--reference", help="Reference model for the collapse decomposition (default: the run's base "
                   "model; 'none' to skip).")
    p.add_argument("--seeds", nargs="+", help="Eval seeds (default: the config's run.seed).")
    p.add_argument("--out", help="Output folder (default: RUN/evals/<name>_n<N>, or ./evals/<name>_n<N>).")
    p.add_argument("--benchmarks", help="Comma-separated standard benchmarks (aime24,math500,...): per benchmark "
                   "CSV/JSON, pass@k panels and paired differences vs --reference under OUT/benchmarks/; --n then "
                   "overrides each benchmark's own n (README, Benchmarks).")
    p.add_argument("--limit", type=int, help="With --benchmarks: the first L problems of each.")
    p.add_argument("--strategy", choices=["direct", "vs"], help="With --benchmarks: direct sampling (default) or "
                   "Verbalized Sampling (benchmarks.vs_candidates answers per generation, read back as samples).")
    p.set_defaults(func=_eval)

    p = sub.add_parser("report", help="Regenerate CSV/JSON, plots and report.md/html from existing outputs.")
    p.add_argument("paths", nargs="+", metavar="RUN_DIRS_OR_COMPARE_DIR")
    p.add_argument("--out", help="Output folder (default: <first path>/report).")
    p.add_argument("--title", help="Report title.")
    p.add_argument("--baseline", help=BASELINE_HELP)
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "restore", help="Selective layer restoration: tuned model with decoder layers i..j-1 from the base.",
        description="Writes OUT = TUNED with decoder layers LAYERS (Python half-open slices over 0-based "
        "layers: '4:8' = layers 4..7; ':4', '-2:', '0:2,6:8' work) taken from BASE.")
    p.add_argument("--base", required=True)
    p.add_argument("--tuned", required=True)
    p.add_argument("--layers", required=True, metavar="I:J",
                   help="Layers to restore, e.g. 4:8; write a negative start as --layers=-2: (argparse).")
    p.add_argument("--out", required=True)
    p.add_argument("--prefix", help="Decoder-layer key prefix (default: detected, e.g. model.layers).")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_restore)

    p = sub.add_parser(
        "bench", help="Speed/memory ratios measured side by side: chunked entropy, pass@k, a train step's split.",
        description="Chunked vs naive float32 log-prob + entropy (time, peak memory, agreement), vectorised vs "
        "looped pass@k, and the stage split of real train steps through Ray on the demo model.")
    p.add_argument("--out", default="runs/bench.json", help="JSON output file (default: runs/bench.json).")
    p.add_argument("--quick", action="store_true", help="Smaller sizes and 3 train steps instead of 10.")
    p.add_argument("--vs-trl", action="store_true",
                   help="Instead: rl_div vs TRL's GRPOTrainer on the same work, interleaved fresh processes "
                   "(rl_div/bench/vs_trl.py); JSON to runs/bench_vs_trl.json unless --out is given.")
    p.add_argument("--methods", metavar="M,M",
                   help="Instead: each method's steady step over grpo's, fresh runs in rotated rounds, e.g. "
                   "grpo,arm,steer,novelty (rl_div/bench/methods.py; --pairs rounds, --steps-20m steps, "
                   "--models 20m or demo); JSON to runs/bench_methods.json unless --out is given.")
    p.add_argument("--interleave", action="store_true",
                   help="--methods: one step of every method in turn in one process, timed in CPU seconds, "
                   "--pairs rounds (rl_div/bench/method_steps.py; robust to a shared machine's load); JSON to "
                   "runs/bench_method_steps.json unless --out is given.")
    p.add_argument("--baseline", metavar="DIR",
                   help="--vs-trl and the startup section: also run rl_div from this checkout (e.g. main's) "
                   "in every pair / round, for before/after side by side.")
    p.add_argument("--models", default="demo,20m", help="--vs-trl: models, from demo,20m (default both).")
    p.add_argument("--pairs", type=int, default=3, help="--vs-trl: interleaved run pairs per model.")
    p.add_argument("--steps", type=int, default=40, help="--vs-trl: steps per run on the demo model.")
    p.add_argument("--steps-20m", type=int, default=12, help="--vs-trl: steps per run on the 20M model.")
    p.add_argument("--micro-batches", default="1,2", help="--vs-trl: settings, the step's 128 rows in this many "
                   "micro-batches on both sides (default 1,2: one of 128, two of 64).")
    p.add_argument("--sections", nargs="+", metavar="SECTION",
                   help=f"Sections to run (default: all): {' '.join(BENCH_SECTIONS)}. "
                   "lm_head, rewards and long_step use V=151,936 (tiny_qwen), GSM8K-style rewards and "
                   "256-token generations; learner_work* time the learner's work per method in one process, "
                   "fsdp* the sharded update (demo / 50M model), sync* one weight sync to the rollout workers "
                   "(demo / 50M model), off_policy lag 0 vs 1, startup the demo's launch -> first step "
                   "(separate rollout actor vs rollout.colocate; --baseline DIR adds that checkout's).")
    p.set_defaults(func=_bench)

    p = sub.add_parser("config-help", help="Every config field with its default and help text.")
    p.set_defaults(func=_config_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rl_div.cluster.actors import QUIET_ENV

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    # key=value overrides may come after options (rl-div eval CKPT --n 8 data.num_eval_prompts=16):
    # argparse leaves them unparsed; they join the command's overrides, anything else is still an error.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"rl-div: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # RunInterrupted says where the run stopped; actors are stopped
        print(f"rl-div: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except RunStopped as err:  # a learner rank died, a full disk, a blown-up update: the checkpoint to resume from
        print(f"rl-div: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
