"""`taskvec soft`: train / show / eval / compare, errors and wrong file kinds (tiny models, seconds)."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli as run
from taskvec.activations import extract_function_vector
from taskvec.tasks import get_task
from test_soft import _soft, _tiny, one_thread  # noqa: F401  (one_thread: autouse, one torch thread)

CLI_SMALL = ["--shots", "2", "--n-prompts", "4", "--val-limit", "8", "--batch-size", "4",
             "--eval-every", "2", "--no-progress"]


def test_cli_train_show_eval_compare(tiny_dir, tmp_path, capsys) -> None:
    out = tmp_path / "soft.safetensors"
    code, text, _ = run(capsys, "soft", "train", "--model", tiny_dir, "--task", "antonym", "--out", out,
                        "--steps", 4, *CLI_SMALL, "--json")
    assert code == 0, text
    info = json.loads(text)
    assert info["n_params"] == 8 and info["file_bytes"] == out.stat().st_size
    assert info["recipe"]["steps"] == 4 and len(info["history"]) == 3
    code, text, _ = run(capsys, "soft", "train", "--model", tiny_dir, "--task", "antonym", "--out",
                        tmp_path / "b.safetensors", "--steps", 2, "--answer-tokens", "all",
                        "--positions", "last+generated", *CLI_SMALL)
    assert code == 0 and "top heads" in text and "training:" in text
    png, html = tmp_path / "alpha.png", tmp_path / "alpha.html"
    code, text, _ = run(capsys, "soft", "show", out, "--plot", png)
    assert code == 0 and png.stat().st_size > 0 and "8 trained parameters" in text
    code, text, _ = run(capsys, "soft", "show", out, "--plot", html, "--top", 3, "--json")
    assert code == 0 and len(json.loads(text)["top_heads"]) == 3 and html.exists()
    code, text, _ = run(capsys, "soft", "eval", "--model", tiny_dir, "--vector", out, "--limit", 3,
                        "--shots", "2", "--no-progress", "--json")
    assert code == 0
    rows = json.loads(text)["rows"]
    assert [r["method"].split(" (")[0] for r in rows] == ["zero-shot", "2-shot ICL", "soft task vector"]
    assert json.loads(text)["split"] == "test"
    code, text, _ = run(capsys, "soft", "compare", "--model", tiny_dir, "--task", "antonym", "--soft", out,
                        "--limit", 2, "--shots", "1", "--no-progress")
    assert code == 0 and "soft task vector" in text and "1-shot ICL" in text and "params" in text
    assert "95% CI" in text and "vs ICL" in text and "examples: first 2" in text
    code, text, _ = run(capsys, "soft", "compare", "--model", tiny_dir, "--task", "antonym", "--soft", out,
                        "--sample", 3, "--seed", 1, "--shots", "1", "--no-progress", "--json")
    assert code == 0
    rows = json.loads(text)["rows"]
    assert rows[0]["subset"] == "sample 3 (seed 1)" and rows[-1]["vs_icl"]["against"] == "1-shot ICL"


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["soft", "train", "--task", "antonymm", "--out", "x.safetensors"], "antonym"),
        (["soft", "train", "--task", "antonym", "--out", "x.pt"], ".safetensors"),
        (["soft", "train", "--task", "antonym", "--out", "x.safetensors", "--steps", "0"], "--steps"),
        (["soft", "train", "--task", "antonym", "--out", "x.safetensors", "--lr", "-1"], "--lr"),
        (["soft", "train", "--task", "antonym", "--out", "x.safetensors", "--temperature", "0"],
         "--temperature"),
        (["soft", "train", "--task", "antonym", "--out", "x.safetensors", "--answer-tokens", "two"], "first"),
        (["soft", "train", "--task", "antonym", "--out", "x.safetensors", "--positions", "all"],
         "--positions"),
        (["soft", "train", "--task", "antonym", "--out", "/nonexistent/dir/x.safetensors"], "does not exist"),
        (["soft", "eval", "--vector", "missing.safetensors"], "does not exist"),
        (["soft", "show", "missing.safetensors"], "does not exist"),
        (["soft", "compare", "--task", "antonym", "--soft", "missing.safetensors"], "does not exist"),
        (["soft", "compare", "--task", "antonym", "--shots", "a"], "--shots"),
        (["soft", "compare", "--task", "antonym", "--sample", "0"], "--sample"),
        (["soft", "compare", "--task", "antonym", "--sample", "3", "--limit", "2"], "--limit"),
        (["soft", "compare", "--task", "antonym", "--limit", "0"], "--limit"),
        (["soft", "compare", "--task", "antonym", "--split", "dev"], "split"),
    ],
)
def test_cli_errors_exit_2(argv, msg, capsys) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert msg in err and len(err.strip().splitlines()) == 1


def test_cli_wrong_file_kinds(tiny_dir, tmp_path, capsys) -> None:
    model, tok = _tiny("llama")
    fv = extract_function_vector(model, tok, get_task("antonym"), shots=2, n_prompts=4,
                                 heads=[(0, 1)], layer=1, sweep_limit=2)
    fv_path = fv.save(tmp_path / "fv.safetensors")
    soft_path = _soft(model, 0.0, task="antonym").save(tmp_path / "s.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(soft_path.read_bytes()[:100])
    for argv, msg in [
        (["soft", "eval", "--vector", fv_path], "is a function vector"),
        (["soft", "show", tmp_path / "cut.safetensors"], "truncated"),
        (["soft", "show", soft_path, "--plot", tmp_path / "a.jpg"], "--plot"),
        (["soft", "compare", "--task", "antonym", "--fv", soft_path], "is a soft task vector"),
        (["soft", "compare", "--task", "antonym", "--residual", fv_path], "not a residual vector"),
        (["soft", "compare", "--task", "antonym", "--lora", fv_path], "is a function vector"),
    ]:
        code, _, err = run(capsys, *argv)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (argv, err)
    code, text, err = run(capsys, "soft", "show", soft_path)
    assert code == 0 and "soft task vector" in text
