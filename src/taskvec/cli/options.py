"""The options every command shares (--json, --no-progress, --debug, --model, --seed, ...),
input checks, and the one-line-error parser. Printing lives in :mod:`taskvec.cli.output`."""

from __future__ import annotations

import argparse
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskvec.errors import UserInputError
from taskvec.model_catalog import DEFAULT_MODEL


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def add_model(p: argparse.ArgumentParser, flag: str = "--model", required: bool = False) -> None:
    p.add_argument(
        flag,
        default=None if required else DEFAULT_MODEL,
        required=required,
        help=f"embedded model name, HF model directory, .gguf file or hub id (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--dtype", default="float32", help="float32 (default; fastest on CPU), bfloat16, float16")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_task_out(
    p: argparse.ArgumentParser,
    task_help: str = "task name (see `taskvec tasks`), e.g. antonym",
    out_help: str = "output .safetensors file",
) -> None:
    """The required --task and --out of commands that write a vector file."""
    p.add_argument("--task", required=True, help=task_help)
    p.add_argument("--out", required=True, help=out_help)


def add_run_options(p: argparse.ArgumentParser, force_help: str | None = None) -> None:
    """--seed, --batch-size, --force (with ``force_help``), --no-progress and --json."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    if force_help:
        p.add_argument("--force", action="store_true", help=force_help)
    add_progress(p)
    add_json(p)


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr, so they never mix with --json output on stdout."""
    return not getattr(args, "no_progress", False)


def _plain(text: str) -> str:
    """``text`` with ``%`` escaped for argparse (a ``%(prog)s``-style directive is kept)."""
    return text if "%(" in text else text.replace("%", "%%")


def new_command(sub: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a subcommand parser that also accepts --debug after the command name.

    ``help`` and ``description`` are plain text: a ``%`` in them is escaped here, since argparse
    would read it as a format directive and fail on ``--help``.
    """
    help, description = _plain(help), _plain(description or help)
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return p


def group_help(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The ``func`` of a command group run without an action: print its help, exit 2."""

    def run(_: argparse.Namespace) -> int:
        p.print_help()
        return 2

    return run


def check_positive(*flags: tuple[str, int]) -> None:
    """``UserInputError`` for the first ``(flag, value)`` whose value is not positive."""
    for flag, v in flags:
        if v <= 0:
            raise UserInputError(f"{flag} must be positive, got {v}.")


def check_safetensors_out(out: str, writable: bool = True) -> Path:
    """Validate --out before any work: a ``.safetensors`` file, writable (unless not ``writable``)."""
    from taskvec.io_utils import check_writable

    path = check_writable(out) if writable else Path(out)
    if path.suffix != ".safetensors":
        raise UserInputError(f"--out must end in .safetensors, got {path.name!r}.")
    return path


def check_plot(
    flag: str, path: str | None, suffixes: tuple[str, ...] = (".png", ".html"), writable: bool = True
) -> None:
    """Validate a plot path (when given) before any work: one of ``suffixes``, writable (if ``writable``)."""
    if not path:
        return
    from taskvec.io_utils import check_writable

    if writable:
        check_writable(path)
    if Path(path).suffix not in suffixes:
        raise UserInputError(f"{flag} must end in {' or '.join(suffixes)}, got {path!r}.")


def write_head_heatmap(values: Any, path: str, title: str, cbar: str) -> str:
    """Write a layer x head heatmap of ``values`` (L, H) as ``.html`` or PNG; returns ``path``."""
    ylabels = [str(i) for i in range(values.shape[0])]
    xlabels = [str(h) for h in range(values.shape[1])]
    if Path(path).suffix == ".html":
        from taskvec.eval.report import heatmap_html
        from taskvec.io_utils import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(heatmap_html(values, ylabels, xlabels, title, "layer", "head"))
        return path
    from taskvec.eval.report import heatmap_png

    heatmap_png(values, ylabels, xlabels, Path(path), title=title, ylabel="layer", xlabel="head", cbar=cbar)
    return path


#: the flags every command accepts, with one meaning (see the README's CLI conventions)
COMMON_FLAGS: dict[str, dict[str, Any]] = {
    "--json": {"action": "store_true", "help": "print machine-readable JSON"},
    "--no-progress": {"action": "store_true", "help": "hide progress bars"},
    "--debug": {"action": "store_true", "default": argparse.SUPPRESS, "help": "show full tracebacks"},
    "--model": {"default": DEFAULT_MODEL, "help": "the model (this command reads none: ignored)"},
    "--seed": {"type": int, "default": 0, "help": "random seed (this command draws none: ignored)"},
}


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Give every command (leaf parser) of ``parser``'s tree the :data:`COMMON_FLAGS` it lacks.

    A command that uses a flag defines it itself; the ones added here are accepted so that a
    script can pass the same flags to any command. Command groups get none (they print help).
    """
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        have = {o for a in parser._actions for o in a.option_strings}
        for flag, spec in COMMON_FLAGS.items():
            if flag not in have:
                parser.add_argument(flag, **spec)
        return
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):
            add_common_flags(child)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line and exits with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parse_params(items: list[str], flag: str = "--param") -> dict[str, str]:
    """``["density=0.2", "lambda=1"]`` -> ``{"density": "0.2", "lambda": "1"}`` (typed later)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise UserInputError(f'{flag} needs KEY=VALUE, got "{item}".')
        if key in out:
            raise UserInputError(f'{flag} "{key}" given twice.')
        out[key] = value.strip()
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Linux: ``VmHWM`` from ``/proc/self/status``, the peak of this process's own memory since
    it started. ``ru_maxrss`` is not used there because it also carries the parent's peak
    when the parent spawned us with vfork (as Python's subprocess does). Elsewhere
    ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)
