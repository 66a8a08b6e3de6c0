"""Models: loading (embedded GGUF, HF directories, hub ids), architecture adapters, tiny models."""

from taskvec.models.adapter import ModelAdapter, get_adapter, output_tensor
from taskvec.models.fingerprint import fingerprint
from taskvec.models.loading import (
    DEFAULT_MODEL,
    EMBEDDED,
    cache_dir,
    load_model,
    load_tokenizer,
    model_dir,
    model_name,
    prepare_tokenizer,
)
from taskvec.models.tiny import TINY_ARCHS, tiny_model, tiny_tokenizer

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "TINY_ARCHS",
    "ModelAdapter",
    "cache_dir",
    "fingerprint",
    "get_adapter",
    "load_model",
    "load_tokenizer",
    "model_dir",
    "model_name",
    "output_tensor",
    "prepare_tokenizer",
    "tiny_model",
    "tiny_tokenizer",
]
