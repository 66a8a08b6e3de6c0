"""Models: loading (embedded GGUF, HF directories, hub ids), architecture adapters, tiny models.

The names below are imported on first use (PEP 562), so that ``import taskvec.models.names`` or
``taskvec --help`` does not pay for importing torch.
"""

from __future__ import annotations

import sys
from typing import Any

#: public name -> the submodule that defines it
_WHERE = {
    "ModelAdapter": "adapter", "get_adapter": "adapter", "output_tensor": "adapter",
    "fingerprint": "fingerprint",
    "DEFAULT_MODEL": "names",
    "EMBEDDED": "loading", "cache_dir": "loading", "load_model": "loading", "load_tokenizer": "loading",
    "model_dir": "loading", "model_name": "loading", "prepare_tokenizer": "loading",
    "TINY_ARCHS": "tiny", "tiny_model": "tiny", "tiny_tokenizer": "tiny",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'taskvec.models' has no attribute {name!r}")
    full = f"taskvec.models.{where}"
    __import__(full)  # not ``from taskvec.models import x``: that would call back into here
    value = getattr(sys.modules[full], name)
    globals()[name] = value
    return value
