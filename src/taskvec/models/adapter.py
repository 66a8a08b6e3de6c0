"""Per-architecture views of decoder-only language models (in the spirit of TransformerLens).

A :class:`ModelAdapter` tells the rest of taskvec where the decoder layers, the attention
output projection ("o_proj"), the final norm, the embeddings and the LM head of a Hugging Face
causal LM live, and what its head geometry is. Numbers come from the model's (text) config;
module paths are discovered from the module tree, so PEFT-wrapped models and multimodal wrappers
(e.g. ``Gemma3ForConditionalGeneration``) work too. Adapters are registered by
``config.model_type`` in :data:`ARCHITECTURES`; an unregistered model type still works when its
modules follow the common ``...layers[i].self_attn.o_proj`` layout.

transformers 5 notes: decoder layers of Llama, Mistral, Qwen2, Gemma 2/3 and GPT-2 return a
plain tensor (transformers 4 returned a tuple); use :func:`output_tensor` in hooks to accept
both. GPT-2's attention output projection is a ``Conv1D`` whose weight is (in, out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from taskvec.errors import ModelLoadError, ShapeMismatchError, unknown_name
from taskvec.models.sites import check_site
from taskvec.registry import Registry

__all__ = [
    "ARCHITECTURES",
    "GPT2Adapter",
    "GemmaAdapter",
    "ModelAdapter",
    "get_adapter",
    "output_tensor",
    "position_ids",
]


def output_tensor(output: Any) -> torch.Tensor:
    """Return the hidden-state tensor of a module output (a tensor, or a tuple/list of them)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(f"cannot find a hidden-state tensor in a module output of type {type(output)}")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a (left-)padded batch: 0 at each row's first real token.

    Needed in plain forward calls for models with absolute position embeddings (GPT-2);
    ``generate`` already does this. ``attention_mask``: (B, T) -> (B, T) long.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None:
        raise ModelLoadError(
            f"{type(model).__name__} has no .config; pass a Hugging Face causal LM model."
        )
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def _conf(config: Any, *names: str, default: Any = None) -> Any:
    """First attribute of ``config`` among ``names`` that is set (not None)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 style ``Conv1D`` (weight stored as (in, out))."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


class ModelAdapter:
    """Uniform access to the parts of a decoder-only causal LM.

    Subclasses only change *where to look* (candidate attribute names); everything else is
    read from the config and the module tree.
    """

    #: module-path suffixes of the decoder-layer ``ModuleList``, most specific first
    layers_paths: Sequence[str] = (
        "model.language_model.layers",
        "language_model.layers",
        "model.layers",
        "transformer.h",
        "gpt_neox.layers",
        "model.decoder.layers",
        "transformer.blocks",
    )
    attn_names: Sequence[str] = ("self_attn", "attn", "attention", "self_attention")
    o_proj_names: Sequence[str] = ("o_proj", "c_proj", "dense", "out_proj")
    #: siblings of the layer list: final norm and token embedding
    norm_names: Sequence[str] = (
        "norm",
        "ln_f",
        "final_layernorm",
        "final_layer_norm",
        "final_norm",
    )
    embed_names: Sequence[str] = ("embed_tokens", "wte", "embed_in", "word_embeddings")

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = _text_config(model)
        self.model_type: str = getattr(model.config, "model_type", "") or ""
        self.n_layers: int = int(_conf(self.config, "num_hidden_layers", "n_layer"))
        self.n_heads: int = int(_conf(self.config, "num_attention_heads", "n_head"))
        self.n_kv_heads: int = int(_conf(self.config, "num_key_value_heads", default=self.n_heads))
        self.hidden_size: int = int(_conf(self.config, "hidden_size", "n_embd", "d_model"))
        self.head_dim: int = int(
            _conf(self.config, "head_dim", default=self.hidden_size // self.n_heads)
        )
        self._layers_name, self._layers = self._find_layers()
        self._attn_attr = self._find_attr(self._layers[0], self.attn_names, "attention module")
        self._o_attr = self._find_attr(
            self.attn(0), self.o_proj_names, "attention output projection"
        )
        self._check_o_proj()

    # ------------------------------------------------------------------ discovery

    def _find_layers(self) -> tuple[str, nn.ModuleList]:
        lists = [
            (name, mod)
            for name, mod in self.model.named_modules()
            if isinstance(mod, nn.ModuleList) and len(mod) == self.n_layers
        ]
        for suffix in self.layers_paths:
            for name, mod in lists:
                if name == suffix or name.endswith("." + suffix):
                    return name, mod
        raise ModelLoadError(
            f"cannot find the {self.n_layers} decoder layers of {type(self.model).__name__} "
            f"(looked for {', '.join(self.layers_paths)}); register an adapter for it."
        )

    def _find_attr(self, parent: nn.Module, names: Sequence[str], what: str) -> str:
        for name in names:
            if isinstance(getattr(parent, name, None), nn.Module):
                return name
        raise ModelLoadError(
            f"cannot find the {what} in {type(parent).__name__} (looked for "
            f"{', '.join(names)}); register an adapter for {type(self.model).__name__}."
        )

    def _check_o_proj(self) -> None:
        w = self.o_proj_weight(0)  # (hidden, n_heads * head_dim)
        want = (self.hidden_size, self.n_heads * self.head_dim)
        if tuple(w.shape) != want:
            raise ShapeMismatchError(
                f"{self.o_proj_name(0)} has weight shape {tuple(w.shape)} but the config implies "
                f"{want} (hidden, heads*head_dim); fix config.head_dim or register an adapter."
            )

    def _sibling(self, names: Sequence[str], what: str) -> nn.Module:
        parent = self._layers_name.rpartition(".")[0]
        owner = self.model.get_submodule(parent) if parent else self.model
        for name in names:
            mod = getattr(owner, name, None)
            if isinstance(mod, nn.Module):
                return mod
        raise ModelLoadError(f"cannot find the {what} of {type(self.model).__name__}.")

    # ------------------------------------------------------------------ layers and names

    @property
    def layers(self) -> list[nn.Module]:
        """The decoder layer modules, in order."""
        return list(self._layers)

    def layer_name(self, i: int) -> str:
        """Module path of decoder layer ``i`` as in ``model.named_modules()``."""
        return f"{self._layers_name}.{self._index(i)}"

    def attn_name(self, i: int) -> str:
        """Module path of the attention module of layer ``i``."""
        return f"{self.layer_name(i)}.{self._attn_attr}"

    def attn(self, i: int) -> nn.Module:
        """Attention module of layer ``i``."""
        return getattr(self._layers[self._index(i)], self._attn_attr)

    def o_proj_name(self, i: int) -> str:
        """Module path of the attention output projection of layer ``i``."""
        return f"{self.attn_name(i)}.{self._o_attr}"

    def o_proj(self, i: int) -> nn.Module:
        """Attention output projection of layer ``i`` (input: concatenated heads)."""
        return getattr(self.attn(i), self._o_attr)

    @property
    def o_proj_has_bias(self) -> bool:
        """Whether the attention output projection adds a bias."""
        return getattr(self.o_proj(0), "bias", None) is not None

    def o_proj_weight(self, i: int) -> torch.Tensor:
        """Weight of layer ``i``'s output projection as (hidden, n_heads * head_dim)."""
        mod = self.o_proj(i)
        w = mod.weight
        return w.T if _is_conv1d(mod) else w  # Conv1D stores (in, out)

    def o_proj_bias(self, i: int) -> torch.Tensor | None:
        """Bias of layer ``i``'s output projection, (hidden,), or None."""
        return getattr(self.o_proj(i), "bias", None)

    def residual_module(self, i: int) -> nn.Module:
        """Module whose output (tensor, or tuple with it first) is the residual after layer ``i``."""
        return self._layers[self._index(i)]

    def mlp(self, i: int) -> nn.Module:
        """The MLP block of layer ``i``."""
        layer = self._layers[self._index(i)]
        attr = self._find_attr(layer, ("mlp", "feed_forward", "ffn"), "MLP block")
        return getattr(layer, attr)

    def site(self, name: str, layer: int) -> tuple[nn.Module, str]:
        """The module and hook direction (``"pre"`` | ``"forward"``) of a named hook site
        (:data:`taskvec.models.sites.SITES`: ``head_out``, ``attn_out``, ``mlp_out``,
        ``resid_pre``, ``resid_post``) at ``layer``."""
        info = check_site(name)
        return getattr(self, info.module)(layer), info.direction

    def site_module_name(self, name: str, layer: int) -> str:
        """The ``named_modules()`` name of a site's module (e.g. ``model.layers.3.self_attn.o_proj``)."""
        module, _ = self.site(name, layer)
        return next(n for n, m in self.model.named_modules() if m is module)

    def post_attn_norm(self, i: int) -> nn.Module | None:
        """Norm applied to the attention output before the residual add (Gemma), else None."""
        return None

    def post_attn_gain(self, i: int) -> tuple[torch.Tensor, float] | None:
        """``(g (hidden,), eps)`` of the RMS norm on layer ``i``'s attention output before the
        residual add, i.e. ``norm(x) = g * x / sqrt(mean(x**2) + eps)``; None where the attention
        output is added as it is. What a head adds to the residual is then ``g * W_h z_h / rms(x)``."""
        norm = self.post_attn_norm(i)
        return None if norm is None else rms_norm_gain(norm, self.hidden_size)

    @property
    def final_norm(self) -> nn.Module:
        """Final norm applied to the residual stream before the LM head."""
        return self._sibling(self.norm_names, "final norm")

    @property
    def embed(self) -> nn.Module:
        """Token embedding module."""
        get = getattr(self.model, "get_input_embeddings", None)
        mod = get() if callable(get) else None
        return mod if isinstance(mod, nn.Module) else self._sibling(self.embed_names, "embedding")

    @property
    def embed_scale(self) -> float:
        """Factor the model applies to embeddings outside the embedding module (1.0 here)."""
        return 1.0

    @property
    def lm_head(self) -> nn.Module:
        """Output projection to vocabulary logits."""
        get = getattr(self.model, "get_output_embeddings", None)
        mod = get() if callable(get) else None
        if isinstance(mod, nn.Module):
            return mod
        raise ModelLoadError(f"cannot find the LM head of {type(self.model).__name__}.")

    # ------------------------------------------------------------------ heads

    def head_slice(self, h: int) -> slice:
        """Slice of head ``h`` in the o_proj input features (n_heads * head_dim)."""
        if not 0 <= h < self.n_heads:
            raise IndexError(f"head {h} out of range for {self.n_heads} heads")
        return slice(h * self.head_dim, (h + 1) * self.head_dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n_heads * head_dim) -> (..., n_heads, head_dim), a view when possible."""
        return x.unflatten(-1, (self.n_heads, self.head_dim))

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n_heads, head_dim) -> (..., n_heads * head_dim)."""
        return x.flatten(-2)

    # ------------------------------------------------------------------ misc

    def _index(self, i: int) -> int:
        if not -self.n_layers <= i < self.n_layers:
            raise IndexError(f"layer {i} out of range for {self.n_layers} layers")
        return i % self.n_layers

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_type or type(self.model).__name__}: "
            f"layers={self.n_layers}, heads={self.n_heads}, kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, hidden={self.hidden_size}, layers_at={self._layers_name!r})"
        )


def rms_norm_gain(norm: nn.Module, hidden: int) -> tuple[torch.Tensor, float]:
    """``(g, eps)`` with ``norm(x) == g * x / sqrt(mean(x**2) + eps)``, read off the module by
    applying it to a ones vector, then checked on a random vector (ModelLoadError if ``norm``
    is not an RMS norm, e.g. a LayerNorm that subtracts the mean)."""
    eps = float(next((getattr(norm, a) for a in ("eps", "variance_epsilon") if hasattr(norm, a)), 1e-6))
    p = next(norm.parameters(), None)
    dtype, device = (p.dtype, p.device) if p is not None else (torch.float32, "cpu")
    x = torch.randn(hidden, generator=torch.Generator().manual_seed(0))  # (hidden,)
    with torch.no_grad():
        g = norm(torch.ones(hidden, dtype=dtype, device=device)).float().cpu() * (1.0 + eps) ** 0.5
        out = norm(x.to(dtype=dtype, device=device)).float().cpu()
    ref = g * x / (x.pow(2).mean() + eps).sqrt()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    if not torch.allclose(out, ref, rtol=tol, atol=tol * float(ref.abs().max())):
        raise ModelLoadError(
            f"{type(norm).__name__} on the attention output is not an RMS norm, so a head's share of the "
            "residual cannot be computed; register an adapter that overrides post_attn_gain."
        )
    return g, eps


class GemmaAdapter(ModelAdapter):
    """Gemma 2 / 3: head_dim from config, sandwich norms, embeddings scaled by sqrt(hidden)."""

    def post_attn_norm(self, i: int) -> nn.Module | None:
        return getattr(self._layers[self._index(i)], "post_attention_layernorm", None)

    @property
    def embed_scale(self) -> float:
        # Gemma 3 scales inside its embedding module (Gemma3TextScaledWordEmbedding).
        if hasattr(self.embed, "embed_scale"):
            return 1.0
        return float(self.hidden_size) ** 0.5


class GPT2Adapter(ModelAdapter):
    """GPT-2: ``transformer.h[i].attn.c_proj`` (Conv1D), ``ln_f``, ``wte``."""

    layers_paths = ("transformer.h",)
    attn_names = ("attn",)
    o_proj_names = ("c_proj",)
    norm_names = ("ln_f",)
    embed_names = ("wte",)


#: ``config.model_type`` -> adapter class
ARCHITECTURES: Registry[type[ModelAdapter]] = Registry("architecture")
for _name in ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3"):
    ARCHITECTURES.register(_name, ModelAdapter)
for _name in ("gemma", "gemma2", "gemma3", "gemma3_text"):
    ARCHITECTURES.register(_name, GemmaAdapter)
ARCHITECTURES.register("gpt2", GPT2Adapter)


def get_adapter(model: nn.Module) -> ModelAdapter:
    """Return the adapter for ``model``, chosen by ``config.model_type``.

    Unregistered model types fall back to generic discovery; if that fails too, an
    ``UnknownNameError`` lists the supported architectures.
    """
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", "") or type(model).__name__)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES.get(model_type)(model)
    try:
        return ModelAdapter(model)
    except (ModelLoadError, ShapeMismatchError, TypeError, ValueError, AttributeError):
        err = unknown_name("architecture", model_type, ARCHITECTURES.names())
        raise type(err)(
            f"{err} Decoder-only models with model.layers[i].self_attn.o_proj also work."
        ) from None
