"""Help always works: the root, bare ``taskvec``, every command and group; common flags everywhere."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from conftest import run_cli
from taskvec.cli.main import build_parser
from taskvec.cli.options import COMMON_FLAGS


def _walk(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, child in a.choices.items():
                yield from _walk(child, (*path, name))


PATHS = [path for path, _ in _walk(build_parser())]
LEAVES = [path for path, p in _walk(build_parser())
          if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]


def test_tree_is_walked() -> None:
    assert len(PATHS) > 25 and ("fv", "extract") in PATHS and ("negate",) in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "root")
def test_help_exits_0(path: tuple[str, ...], capsys) -> None:
    code, out, err = run_cli(capsys, *path, "--help")
    assert code == 0, err
    assert out.startswith("usage: taskvec") and "Traceback" not in out + err


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_every_command_takes_the_common_flags(path: tuple[str, ...]) -> None:
    parser = dict(_walk(build_parser()))[path]
    flags = {o for a in parser._actions for o in a.option_strings}
    assert set(COMMON_FLAGS) <= flags


def test_bare_taskvec_prints_help_and_exits_2() -> None:
    # a real process: the console entry point, no traceback
    proc = subprocess.run([sys.executable, "-m", "taskvec"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stdout.startswith("usage: taskvec") and "Traceback" not in proc.stderr


def test_percent_in_help_is_escaped(capsys) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "95%" in out  # the negate line, shown as written


def test_no_progress_hides_other_libraries_bars() -> None:
    """--no-progress also silences bars taskvec does not draw (transformers' GGUF conversion uses
    a bare tqdm; Hugging Face downloads their own), and the settings are restored after."""
    code = (
        "import os\n"
        "from taskvec.cli.main import third_party_bars\n"
        "with third_party_bars(False):\n"
        "    from tqdm.auto import tqdm\n"
        "    bar = tqdm(range(3))\n"
        "    assert bar.disable, 'a bare tqdm bar still draws'\n"
        "    assert os.environ['HF_HUB_DISABLE_PROGRESS_BARS'] == '1'\n"
        "assert 'TQDM_DISABLE' not in os.environ and 'HF_HUB_DISABLE_PROGRESS_BARS' not in os.environ\n"
        "with third_party_bars(True):\n"
        "    assert 'TQDM_DISABLE' not in os.environ\n"
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
