"""Tiny, randomly initialised causal LMs and a byte-level tokenizer, built offline.

For tests and examples: every architecture taskvec supports, a few hundred kB each, with
deterministic weights from a seed and nothing downloaded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from taskvec.models.compat import dtype_kwargs
from taskvec.registry import Registry

__all__ = ["TINY_ARCHS", "tiny_model", "tiny_tokenizer"]

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
# ids: bytes 0..255 are their own id; specials follow
PAD_ID, BOS_ID, EOS_ID = 256, 257, 258
VOCAB_SIZE = 259


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map (the ByteLevel alphabet)."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> Any:
    """A byte-level tokenizer (259 ids: 256 bytes, then <pad>, <s>, </s>), built offline.

    No merges, so every byte is one token and any text round-trips. No BOS is added when
    encoding. ``padding_side="left"``. Cached: all callers share one object, do not mutate it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    vocab.update({PAD: PAD_ID, BOS: BOS_ID, EOS: EOS_ID})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD, BOS, EOS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="left",
        model_max_length=1024,
        # only what causal LMs take (transformers 4.x also returned token_type_ids)
        model_input_names=["input_ids", "attention_mask"],
    )


_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "pad_token_id": PAD_ID,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
}

_ARCHS: Registry[Callable[[dict[str, Any]], Any]] = Registry("tiny architecture")


@_ARCHS.register("llama")
def _llama(kw: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    # tied embeddings, like SmolLM2
    return LlamaConfig(**{**_COMMON, "tie_word_embeddings": True, **kw})


@_ARCHS.register("mistral")
def _mistral(kw: dict[str, Any]) -> Any:
    from transformers import MistralConfig

    return MistralConfig(**{**_COMMON, "sliding_window": None, "tie_word_embeddings": False, **kw})


@_ARCHS.register("qwen2")
def _qwen2(kw: dict[str, Any]) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(**{**_COMMON, "tie_word_embeddings": False, **kw})


@_ARCHS.register("gemma2")
def _gemma2(kw: dict[str, Any]) -> Any:
    from transformers import Gemma2Config

    # head_dim 32 != hidden / heads (16), as in real Gemma models
    base = {**_COMMON, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 8}
    return Gemma2Config(**{**base, **kw})


@_ARCHS.register("gemma3")
def _gemma3(kw: dict[str, Any]) -> Any:
    from transformers import Gemma3TextConfig

    base = {
        **_COMMON,
        "num_hidden_layers": 3,
        "head_dim": 32,
        "query_pre_attn_scalar": 32,
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    }
    if "num_hidden_layers" in kw and "layer_types" not in kw:
        n = kw["num_hidden_layers"]
        base["layer_types"] = [
            "full_attention" if (j + 1) % 3 == 0 else "sliding_attention" for j in range(n)
        ]
    return Gemma3TextConfig(**{**base, **kw})


@_ARCHS.register("gpt2")
def _gpt2(kw: dict[str, Any]) -> Any:
    from transformers import GPT2Config

    base = {
        "vocab_size": VOCAB_SIZE,
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 512,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }
    return GPT2Config(**{**base, **kw})


#: architectures :func:`tiny_model` can build
TINY_ARCHS: tuple[str, ...] = ("llama", "mistral", "gemma2", "gemma3", "qwen2", "gpt2")


def tiny_model(arch: str, seed: int = 0, **overrides: Any) -> tuple[nn.Module, Any]:
    """Build a tiny float32 causal LM of ``arch`` with weights from ``seed``, in eval mode.

    ``overrides`` are config fields (e.g. ``num_hidden_layers=3``). Uses eager attention so
    hooks and outputs are comparable across archs. The global torch RNG is left untouched.
    Returns ``(model, tiny_tokenizer())``.
    """
    from transformers import AutoModelForCausalLM

    config = _ARCHS.get(arch)(dict(overrides))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation="eager", **dtype_kwargs(torch.float32)
        )
    model.eval()
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = PAD_ID, BOS_ID, EOS_ID
    return model, tiny_tokenizer()
