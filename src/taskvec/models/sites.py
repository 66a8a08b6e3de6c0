"""Named hook sites: one vocabulary for where an activation is read or edited.

A site is a name from :data:`SITES` and a layer; :meth:`ModelAdapter.site` resolves it to a
module and a hook direction (``"pre"``: the module's input, ``"forward"``: its output), as in
pyvene's table of site -> module + direction, and named in the spirit of TransformerLens's
hook points. Written ``NAME.LAYER`` in text (``head_out.3``); files store the name and layer.

| site | what it is | module (direction) | shape |
|---|---|---|---|
| ``head_out`` | every head's output, before the attention output projection | o_proj (pre) | (B, T, H*D) |
| ``attn_out`` | the attention block's output (o_proj output) | o_proj (forward) | (B, T, hidden) |
| ``mlp_out`` | the MLP block's output | mlp (forward) | (B, T, hidden) |
| ``resid_pre`` | the residual stream entering the layer | decoder layer (pre) | (B, T, hidden) |
| ``resid_post`` | the residual stream after the layer | decoder layer (forward) | (B, T, hidden) |
"""

from __future__ import annotations

from dataclasses import dataclass

from taskvec.errors import UserInputError, unknown_name

__all__ = ["SITES", "SiteInfo", "parse_site", "site_key"]


@dataclass(frozen=True)
class SiteInfo:
    """What a site name means: the adapter's module getter, the hook direction, a description."""

    module: str  # name of the ModelAdapter method giving the module of layer i
    direction: str  # "pre" (the module's input) | "forward" (its output)
    description: str


SITES: dict[str, SiteInfo] = {
    "head_out": SiteInfo("o_proj", "pre", "every head's output, before the attention output projection"),
    "attn_out": SiteInfo("o_proj", "forward", "the attention block's output"),
    "mlp_out": SiteInfo("mlp", "forward", "the MLP block's output"),
    "resid_pre": SiteInfo("residual_module", "pre", "the residual stream entering the layer"),
    "resid_post": SiteInfo("residual_module", "forward", "the residual stream after the layer"),
}


def check_site(name: str) -> SiteInfo:
    """The :class:`SiteInfo` of ``name``; ``UnknownNameError`` (with "did you mean") otherwise."""
    if name not in SITES:
        raise unknown_name("hook site", name, list(SITES))
    return SITES[name]


def site_key(name: str, layer: int) -> str:
    """``"head_out.3"``: the text form of a site."""
    check_site(name)
    return f"{name}.{int(layer)}"


def parse_site(text: str) -> tuple[str, int]:
    """``"head_out.3"`` -> ``("head_out", 3)``."""
    name, _, layer = str(text).rpartition(".")
    if not name or not layer.lstrip("-").isdigit():
        raise UserInputError(f'a hook site is NAME.LAYER (e.g. "head_out.3"), got "{text}".')
    check_site(name)
    return name, int(layer)
