"""The `cmroberta` command line: one subcommand per verb, each in `launch/commands/<verb>.py`.

A verb module exposes `register(subparsers)`, which adds its parser and sets
`handler` to a typed function. User errors (a bad config, a missing corpus folder)
print one clear message and exit with status 2, and so do a full disk, a read-only
filesystem and a folder without permission (naming the folder); anything else is a bug
and keeps its traceback. Ctrl-C prints one line and exits 130, as shells expect of an
interrupted command, and SIGTERM (SLURM's signal at a time limit or scancel) prints one
line and exits 143; every file is written under a temporary name that the interrupted
write removes, so nothing partial is left behind.
"""

import argparse
import errno
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cluster.config import control_characters

# Verbs in the order `--help` lists them.
VERBS: tuple[str, ...] = (
    "demo",
    "demo_corpus",
    "prepare",
    "extract",
    "train",
    "evaluate",
    "predict",
    "report",
    "reproduce",
    "launch",
    "sweep",
    "config",
    "verify",
)


# Exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_STATUS = 130

# Exit status of a command stopped by SIGTERM (128 + 15): what SLURM and Submitit record for a task the
# signal ended, so that a job stopped this way reads as terminated, not as failed.
TERMINATED_STATUS = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, as KeyboardInterrupt is, so that no `except Exception` swallows it
    and every `finally` on the way out (the ones that remove temporary files) runs."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def terminate_as_exception() -> Iterator[None]:
    """SIGTERM raises Terminated inside the block, as Ctrl-C raises KeyboardInterrupt; the old handler returns after.

    Only the main thread may set handlers; elsewhere the block runs with the process's own handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Exceptions that mean "the user asked for something that cannot be done": the CLI prints
# their message and exits 2 instead of showing a traceback. Each component keeps its own.
USER_ERRORS: tuple[str, ...] = (
    "cluster.config:ConfigError",
    "cluster.durable_files:LockHeldError",
    "launch.cli:UserError",
    "extract.labels:UnknownLabelError",
    "extract.audio:AudioDecodeError",
    "extract.meld:CorpusError",
    "extract.feature_store:FeatureStoreError",
    "extract.text_features:TextEncoderError",
    "extract.speech_features:SpeechEncoderError",
    "extract.openl3:OpenL3SetupError",
    "cluster.ray_runtime:RayStartError",
    "cluster.rendezvous:RendezvousError",
    "model.checkpoint:RunFolderError",
    "launch.run_groups:ReportError",
    "launch.executors:SubmissionError",
    "launch.sweep_records:SweepRecordError",
    "model.token_cache:TokenCacheError",
    "model.predict_input:PredictInputError",
    "model.perturb:PerturbationError",
    "model.metrics_record:MetricsDamagedError",
)


# What to do about an OSError that is the machine's state, not a bug: the folder is named beside it.
RESOURCE_ADVICE: dict[int, str] = {
    errno.ENOSPC: "the disk holding it is full: free space there, or write to another folder, and run it again",
    errno.EDQUOT: "your disk quota there is used up: free space, or write to another folder, and run it again",
    errno.EROFS: "it is on a read-only filesystem: write to a writable folder (copy the input there first if needed)",
    errno.EACCES: "permission denied: make it readable and writable for you (chmod/chown), or use another folder",
    errno.EPERM: "the operation is not permitted there: make it writable for you, or write to another folder",
}


def resource_problem(error: OSError) -> str | None:
    """One line for a full disk, a read-only or forbidden folder, naming the folder; None for any other OSError."""
    advice = RESOURCE_ADVICE.get(error.errno) if error.errno is not None else None
    if advice is None:
        return None
    where = Path(str(error.filename)) if error.filename is not None else None
    folder = where.parent if where is not None and not where.is_dir() else where
    named = f"cannot use {folder} ({error.strerror})" if folder is not None else f"{error.strerror}"
    return f"{named}: {advice}"


class UserError(Exception):
    """An error caused by what the user asked for; the message says what to change."""


def _user_error_classes() -> tuple[type[BaseException], ...]:
    classes = []
    for spec in USER_ERRORS:
        module, name = spec.split(":")
        classes.append(getattr(importlib.import_module(module), name))
    return tuple(classes)


def _path_problem(args: argparse.Namespace) -> str | None:
    """A folder or file argument with a control character: such a name breaks job scripts and logs, so it is refused."""
    for name, value in sorted(vars(args).items()):
        if isinstance(value, Path):
            found = control_characters(str(value))
            if found:
                return (
                    f"{name.replace('_', ' ')} {str(value)!r} holds control characters ({', '.join(found)}); "
                    "use printable characters only"
                )
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmroberta",
        description=(
            "CM-RoBERTa: emotion recognition in conversation from speech and transcripts. "
            "Start with `cmroberta demo`, which builds a small corpus in MELD's layout and runs the whole pipeline. "
            "Every verb takes --help."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        importlib.import_module(f"launch.commands.{verb}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse cannot give one `nargs="*"` positional the words on both sides of an option, so
    # `cmroberta train STORE --resume a=b` leaves `a=b` over: such words are overrides too.
    args, extras = parser.parse_known_args(argv)
    if extras:
        if not hasattr(args, "overrides") or any(word.startswith("-") or "=" not in word for word in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.overrides = [*args.overrides, *extras]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    problem = _path_problem(args)
    if problem is not None:
        print(f"cmroberta {args.verb}: error: {problem}", file=sys.stderr)
        return 2
    try:
        with terminate_as_exception():
            result = args.handler(args)
    except KeyboardInterrupt:
        print(f"cmroberta {args.verb}: interrupted; run it again to continue", file=sys.stderr)
        return INTERRUPTED_STATUS
    except Terminated:
        print(
            f"cmroberta {args.verb}: stopped by SIGTERM (a SLURM time limit, scancel or a shutdown); "
            "temporary files were removed; run it again to continue",
            file=sys.stderr,
        )
        return TERMINATED_STATUS
    except _user_error_classes() as error:
        print(f"cmroberta {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        problem = resource_problem(error)
        if problem is None:
            raise
        print(f"cmroberta {args.verb}: error: {problem}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
