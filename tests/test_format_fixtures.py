"""Files written by earlier releases still load and give the same numbers (tests/fixtures/v1)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

V1 = Path(__file__).resolve().parent / "fixtures" / "v1"


def _maker():
    spec = importlib.util.spec_from_file_location("make_v1", V1.parent / "make_v1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _close(got, want, path: str, rel: float) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), path
        for k in want:
            _close(got[k], want[k], f"{path}/{k}", rel)
    elif isinstance(want, list) and want and isinstance(want[0], float):
        # float64 sums of float32 values: another summation order moves them by ~1e-16 relative
        for g, w in zip(got, want, strict=True):
            assert math.isclose(g, w, rel_tol=rel, abs_tol=1e-12), (path, g, w)
    else:
        assert got == want, (path, got, want)


@pytest.mark.parametrize("name", sorted(json.loads((V1 / "expected.json").read_text())))
def test_v1_file_loads_with_the_same_numbers(name: str) -> None:
    want = json.loads((V1 / "expected.json").read_text())[name]
    got = _maker().expected()[name]
    # a basis recovers tasks through a float64 matmul (length M): other kernels ~1e-12 relative
    _close(got, want, name, rel=1e-9)


def test_every_fixture_is_checked() -> None:
    files = {f.name for f in V1.glob("*.safetensors")}
    assert files <= set(json.loads((V1 / "expected.json").read_text()))
    assert len(files) >= 11


@pytest.mark.parametrize("name", sorted(f.name for f in V1.glob("*.safetensors")))
def test_inspect_reads_every_kind(name: str, capsys) -> None:
    from conftest import run_cli

    code, out, err = run_cli(capsys, "inspect", V1 / name, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["file"].endswith(name)
    if not name.startswith(("vector_", "merged_")):
        assert info["kind"] == json.loads((V1 / "expected.json").read_text())[name].get("kind", info["kind"])
