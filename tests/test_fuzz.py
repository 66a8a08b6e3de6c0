"""Fuzzing loaders with bad files: every case is a clear TaskVecError, no crash, no hang."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskvec.cli.main import main
from taskvec.errors import TaskVecError
from taskvec.tasks import load_task_file
from taskvec.weights import LowRankDelta, TaskVector, load_vector

SETTINGS = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory):
    d = tmp_path_factory.mktemp("fz")
    tv = TaskVector({
        "a.weight": torch.randn(6, 5),
        "b.weight": LowRankDelta(torch.randn(2, 4), torch.randn(3, 2), 0.5),
    }, {"task": "x", "base_fingerprint": "abc"})
    return tv.save(d / "v.safetensors").read_bytes()


def _load_or_clear_error(path):
    try:
        return load_vector(path)
    except TaskVecError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg
        return None


@SETTINGS
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_truncated_vector_files(tmp_path, good_bytes, cut):
    p = tmp_path / "t.safetensors"
    p.write_bytes(good_bytes[: cut % len(good_bytes)])
    assert _load_or_clear_error(p) is None


@SETTINGS
@given(pos=st.integers(min_value=0, max_value=10_000), val=st.integers(min_value=0, max_value=255))
def test_flipped_bytes_in_header(tmp_path, good_bytes, pos, val):
    n = struct.unpack("<Q", good_bytes[:8])[0]
    i = pos % (8 + n)
    raw = bytearray(good_bytes)
    raw[i] = val
    p = tmp_path / "f.safetensors"
    p.write_bytes(bytes(raw))
    _load_or_clear_error(p)  # loads (harmless change) or a clear error


@SETTINGS
@given(data=st.binary(max_size=4096))
def test_random_bytes(tmp_path, data):
    for suffix in (".safetensors", ".pth"):
        p = tmp_path / f"r{suffix}"
        p.write_bytes(data)
        assert _load_or_clear_error(p) is None


def _header_file(tmp_path, header: dict, data: bytes = b"") -> object:
    raw = json.dumps(header).encode()
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return p


@pytest.mark.parametrize(
    "header, data",
    [
        ({"dense::a": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 2**62]}}, b""),  # huge size
        ({"dense::a": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]},
          "__metadata__": {"taskvec_kind": "task_vector", "format_version": "1"}}, b"\0" * 16),  # wrong dtype
        ({"dense::a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
          "__metadata__": {"taskvec_kind": "task_vector", "format_version": "1"}}, b"\0" * 8),  # wrong shape
        ({"lora_A::a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
          "lora_B::a": {"dtype": "F32", "shape": [4, 5], "data_offsets": [24, 104]},
          "__metadata__": {"taskvec_kind": "task_vector", "format_version": "1", "scales": "{\"a\": 1.0}"}},
         b"\0" * 104),  # factors that do not fit
        ({"dense::a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
          "__metadata__": {"taskvec_kind": "task_vector", "format_version": "99"}}, b"\0" * 4),  # future version
        ({"dense::a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
          "__metadata__": {"taskvec_kind": "task_vector", "format_version": "1"}}, b"\x00\x00\xc0\x7f"),  # NaN
        ({"__metadata__": {"taskvec_kind": 5}}, b""),  # non-string metadata
        ({"dense::a": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]},
          "lora_A::a": {"dtype": "F32", "shape": [1, 3], "data_offsets": [48, 60]},
          "lora_B::a": {"dtype": "F32", "shape": [4, 1], "data_offsets": [60, 76]},
          "__metadata__": {"taskvec_kind": "task_vector", "format_version": "1", "scales": "{\"a\": 1.0}"}},
         b"\0" * 76),  # one name stored both dense and low-rank
    ],
)
def test_crafted_headers(tmp_path, header, data):
    with pytest.raises(TaskVecError):
        load_vector(_header_file(tmp_path, header, data))


def test_non_utf8_metadata(tmp_path):
    raw = b'{"__metadata__": {"k": "\xff\xfe"}}'
    p = tmp_path / "u.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(TaskVecError):
        load_vector(p)


def test_pth_not_a_state_dict(tmp_path):
    p = tmp_path / "l.pth"
    torch.save([torch.ones(2)], p)
    with pytest.raises(TaskVecError):
        load_vector(p)
    torch.save({"a": torch.tensor([float("inf")])}, p)
    with pytest.raises(TaskVecError):
        load_vector(p)


@SETTINGS
@given(text=st.text(max_size=300))
def test_random_yaml_task_files(tmp_path, text):
    p = tmp_path / "t.yaml"
    p.write_text(text, encoding="utf-8")
    try:
        load_task_file(p)
    except TaskVecError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(lines=st.lists(st.text(max_size=60), min_size=1, max_size=5))
def test_random_jsonl_task_data(tmp_path, lines):
    (tmp_path / "d.jsonl").write_text("\n".join(lines), encoding="utf-8")
    (tmp_path / "t.yaml").write_text(
        'name: mine\ntemplate: "{text} ->"\nlabel_words: {pos: " yes", neg: " no"}\n'
        "data: {validation: d.jsonl, train: d.jsonl}\n"
    )
    try:
        load_task_file(tmp_path / "t.yaml")
    except TaskVecError as exc:
        assert "\n" not in str(exc)


def test_non_utf8_task_files(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "\xff", "label": "pos"}\n')
    (tmp_path / "t.yaml").write_text(
        'name: mine\ntemplate: "{text} ->"\nlabel_words: {pos: " yes", neg: " no"}\ndata: {validation: d.jsonl}\n'
    )
    with pytest.raises(TaskVecError):
        load_task_file(tmp_path / "t.yaml")
    (tmp_path / "t2.yaml").write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(TaskVecError):
        load_task_file(tmp_path / "t2.yaml")


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"garbage" * 10])
def test_cli_inspect_bad_files_exit_2(tmp_path, capsys, content):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    assert main(["inspect", str(p)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _loaders():
    from taskvec.activations.activation_vector import load_activation
    from taskvec.activations.soft_vector import load_soft
    from taskvec.basis import load_basis

    return {"basis": load_basis, "activation": load_activation, "soft": load_soft, "vector": load_vector}


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    """One valid file of each kind, built on a tiny model / tiny vectors."""
    from taskvec.activations.activation_vector import ActivationVector
    from taskvec.activations.soft_vector import SoftTaskVector
    from taskvec.basis import build_basis

    d = tmp_path_factory.mktemp("kinds")
    vecs = [TaskVector({"a.weight": torch.randn(4, 3), "b.weight": torch.randn(5)}, {"task": f"t{i}"})
            for i in range(3)]
    build_basis(vecs, d / "basis.safetensors", method="pca", m=2)
    ActivationVector("head_means", {"head_means": torch.randn(2, 4, 16)}, {"task": "antonym"}).save(
        d / "act.safetensors")
    SoftTaskVector(torch.zeros(2, 4), torch.randn(2, 4, 16), {"task": "antonym"}).save(d / "soft.safetensors")
    return {"basis": d / "basis.safetensors", "activation": d / "act.safetensors",
            "soft": d / "soft.safetensors"}


@pytest.mark.parametrize("kind", ["basis", "activation", "soft"])
def test_other_kinds_load_and_refuse_damage(tmp_path, good_files, kind):
    load = _loaders()[kind]
    load(good_files[kind])  # the intact file loads
    raw = good_files[kind].read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    cases = {
        "empty": b"",
        "truncated": raw[: len(raw) // 2],
        "header_cut": raw[: 8 + n // 2],
        "huge_len": (2**60).to_bytes(8, "little") + raw[8:],
        "garbage_header": raw[:8] + b"\xff" * n + raw[8 + n:],
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        with pytest.raises(TaskVecError) as ei:
            load(p)
        assert "\n" not in str(ei.value), name
    # a file of another kind is refused with a clear error, never misread
    for other, path in good_files.items():
        if other != kind:
            with pytest.raises(TaskVecError):
                load(path)
    with pytest.raises(TaskVecError):
        load_vector(good_files[kind])


@SETTINGS
@given(data=st.binary(max_size=2048), kind=st.sampled_from(["basis", "activation", "soft"]))
def test_other_kinds_random_bytes(tmp_path, data, kind):
    p = tmp_path / "r.safetensors"
    p.write_bytes(data)
    with pytest.raises(TaskVecError):
        _loaders()[kind](p)
