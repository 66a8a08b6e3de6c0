"""The ``taskvec`` entry point: builds the parser from subcommand modules and maps errors."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from taskvec import __version__
from taskvec.cli.options import OneLineParser, add_common_flags
from taskvec.errors import TaskVecError, TaskVecWarning

# Each module has register(subparsers) that adds its parser(s) with set_defaults(func=run).
SUBCOMMAND_MODULES = (
    "taskvec.cli.cmd_models",
    "taskvec.cli.cmd_tasks",
    "taskvec.cli.cmd_eval",
    "taskvec.cli.cmd_apply",
    "taskvec.cli.cmd_generate",
    "taskvec.cli.cmd_extract",
    "taskvec.cli.cmd_inspect",
    "taskvec.cli.cmd_export_peft",
    "taskvec.cli.cmd_demo",
    "taskvec.cli.cmd_finetune",
    "taskvec.cli.cmd_merge",
    "taskvec.cli.cmd_fv",
    "taskvec.cli.cmd_residual",
    "taskvec.cli.cmd_basis",
    "taskvec.cli.cmd_soft",
    "taskvec.cli.cmd_search",
    "taskvec.cli.cmd_negate",
    "taskvec.cli.cmd_compare",
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="taskvec",
        description="Task vectors for language models: weight-space, bases and activation-space.",
    )
    parser.add_argument("--version", action="version", version=f"taskvec {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for mod_name in SUBCOMMAND_MODULES:
        importlib.import_module(mod_name).register(sub)
    add_common_flags(parser)  # every command takes --json, --no-progress, --debug, --model, --seed
    return parser


@contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """taskvec's own warnings as one line each on stderr, when they happen (others unchanged)."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            if issubclass(category, TaskVecWarning) or (
                    issubclass(category, UserWarning) and "taskvec" in str(filename)):
                print(f"taskvec {command}: warning: {message}", file=sys.stderr, flush=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.simplefilter("always", TaskVecWarning)
        warnings.showwarning = show
        yield


@contextmanager
def third_party_bars(show: bool) -> Iterator[None]:
    """Under ``--no-progress``, also hide other libraries' bars (transformers' one-time GGUF
    de-quantization, Hugging Face downloads), then restore the previous settings.

    Both variables are read when tqdm / huggingface_hub are first imported, which in a ``taskvec``
    process happens after this point (they are imported lazily).
    """
    if show:
        yield
        return
    keys = ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    entry = argv is None  # run as the `taskvec` command (not called from Python with arguments)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (one line, code 2) and --help / --version (0)
        return int(exc.code or 0)
    debug = bool(getattr(args, "debug", False)) or "--debug" in argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with one_line_warnings(args.command), third_party_bars(not getattr(args, "no_progress", False)):
            code = int(args.func(args) or 0)
        started = sys.modules.get("taskvec.dist")  # never imported: no process group was started
        if started is not None:
            started.finish()  # under torchrun: every rank leaves together
            if entry:
                started.leave(code)  # and skips gloo's teardown at interpreter exit
        return code
    except TaskVecError as exc:
        if debug:
            traceback.print_exc()
        print(f"taskvec {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"taskvec {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback with --debug
        if debug:
            traceback.print_exc()
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"taskvec {args.command}: internal error: {type(exc).__name__}: {msg} "
            "(rerun with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
