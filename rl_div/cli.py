"""The ``rl-div`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rl_div.config import ConfigError, config_help, load_config


def _train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"cluster.address={args.address}")
    cfg = load_config(args.config, overrides)
    from rl_div.trainer import train

    out = train(cfg, resume=args.resume)
    print(f"run finished: metrics in {out / 'metrics.jsonl'}, evaluations in {out / 'eval'}")
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, list(args.overrides))
    from rl_div.trainer import resolve_model_path

    if cfg.model.path != "bootstrap":
        print(f"model.path is {cfg.model.path!r}: nothing to bootstrap")
        return 0
    print(resolve_model_path(cfg))
    return 0


def _config_help(args: argparse.Namespace) -> int:
    print("\n".join(config_help()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rl-div", description="Diversity-aware RLVR fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="Run RLVR training through Ray.")
    p.add_argument("config", help="YAML config file (see configs/).")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algo=arm train.steps=10")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start locally).")
    p.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint.")
    p.set_defaults(func=_train)

    p = sub.add_parser("bootstrap", help="Pretrain (or find cached) the tiny demo base model; print its path.")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_bootstrap)

    p = sub.add_parser("config-help", help="Every config field with its default and help text.")
    p.set_defaults(func=_config_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"rl-div: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
