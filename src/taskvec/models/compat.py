"""Differences between the transformers releases taskvec allows, in one place.

(The KV-cache argument's name is handled by :mod:`taskvec.models.kv_cache`.)
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

__all__ = ["dtype_kwargs", "transformers_version"]


@cache
def transformers_version() -> tuple[int, int]:
    """(major, minor) of the installed transformers."""
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def dtype_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    """The ``from_pretrained`` / ``from_config`` keyword for a dtype: ``dtype`` from 4.56 on,
    ``torch_dtype`` before (4.56 renamed it; 5.x drops the old name)."""
    return {"dtype": dtype} if transformers_version() >= (4, 56) else {"torch_dtype": dtype}
