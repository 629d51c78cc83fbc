"""`dsflow` command line: one subcommand per workflow stage; Snakemake rules call these."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dsflow import UserError
from dsflow import gpu
from dsflow import log as dslog

# Modules that define `add_parser(subparsers)`; each parser sets `func(args) -> int`.
COMMANDS = [
    "dsflow.alphabet",
    "dsflow.features",
    "dsflow.config",
    "dsflow.demo",
    "dsflow.validate",
    "dsflow.importer",
    "dsflow.train",
    "dsflow.evaluate",
    "dsflow.lm",
    "dsflow.scorer",
    "dsflow.lm_optimize",
    "dsflow.plot",
    "dsflow.pages",
    "dsflow.export",
    "dsflow.transcribe",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsflow", description=__doc__)
    parser.add_argument("--log", help="also append the log to this file (a rule's log:)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of the logs
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        # `--cores 8` on a smaller machine would otherwise oversubscribe TensorFlow's and our pools.
        args.threads = min(args.threads, len(os.sched_getaffinity(0)))
    dslog.setup(args.log)
    try:
        gpu.prepare(args.command)  # before TensorFlow is imported: which GPU (if any) this job may use
        return args.func(args) or 0
    except UserError as e:
        dslog.log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
