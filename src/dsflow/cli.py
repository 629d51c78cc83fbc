"""`dsflow` command line: one subcommand per workflow stage; Snakemake rules call these.

Only the module of the command being run is imported (so a job runs, and its rule tracks, only the code it needs:
dsflow.deps). Every failure ends in the log (`--log FILE`, a rule's log:) with its reason: a UserError as one
line (exit 2), anything unexpected with its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys

from dsflow import UserError, gpu
from dsflow import log as dslog

# command -> the module whose `add_parser(subparsers)` defines it (its parser sets `func(args) -> int`)
COMMANDS = {
    "demo-corpus": "dsflow.demo",
    "import-cv": "dsflow.importer",
    "validate": "dsflow.validate",
    "features": "dsflow.features",
    "train": "dsflow.train",
    "build-lm": "dsflow.lm",
    "evaluate": "dsflow.evaluate",
    "export": "dsflow.export",
    "plot": "dsflow.plot",
    "page": "dsflow.pages",
    "transcribe": "dsflow.transcribe",
    "infer": "dsflow.infer",
    "alphabet": "dsflow.characters",
    "config-doc": "dsflow.config",
    "export-checkpoint": "dsflow.dscheckpoint",
    "scorer-package": "dsflow.scorer",
    "scorer-set-defaults": "dsflow.scorer",
    "lm-optimize": "dsflow.lm_optimize",
}


def build_parser(commands=COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", help="also append the log to this file (a rule's log:)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for module in dict.fromkeys(COMMANDS[c] for c in commands):
        importlib.import_module(module).add_parser(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (None: no known one, e.g. `dsflow --help`)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--log")
    pre.add_argument("command", nargs="?")
    known, _ = pre.parse_known_args(argv)
    return known.command if known.command in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ log level: DeepSpeech set it to its log_level; 2 (warnings hidden) outside the workflow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", os.environ.get("DSFLOW_LOG_LEVEL", "2"))
    argv = sys.argv[1:] if argv is None else argv
    command = _command(argv)
    args = build_parser([command] if command else COMMANDS).parse_args(argv)
    if getattr(args, "threads", None):
        # `--cores 8` on a smaller machine would otherwise oversubscribe TensorFlow's and our pools.
        args.threads = min(args.threads, len(os.sched_getaffinity(0)))
    # A multi-worker training's other workers (dsflow.distribute) each log to FILE.workerN.
    with dslog.job_output(dslog.worker_logfile(args.log) if args.command == "train" else args.log, args.command):
        if args.log:  # a workflow job: its command line heads its log
            dslog.log.info("dsflow %s", shlex.join(argv))
        try:
            # before TensorFlow is imported: which GPUs (if any) this job may use
            gpu.prepare(args.command, getattr(args, "train_gpus", 1))
            return args.func(args)
        except UserError as e:
            dslog.log.error("%s", e)
            return 2
        except Exception:
            dslog.log.exception("dsflow %s failed with an unexpected error (a bug: please report it with this log)",
                                args.command)
            return 1


if __name__ == "__main__":
    sys.exit(main())
