"""Activation-space task vectors: hooks, head means, indirect effects, function vectors (Todd et
al. 2024) and residual-stream ICL task vectors (Hendel et al. 2023). See docs/activations.md."""

from taskvec.activations.activation_vector import ActivationVector, load_activation, save_activation
from taskvec.activations.evaluation import accuracy, compare, sweep
from taskvec.activations.function_vectors import (
    extract_function_vector,
    function_vector,
    head_contribution,
    parse_heads,
)
from taskvec.activations.heads import HeadMeans, head_activations, head_means
from taskvec.activations.hooks import (
    AddHook,
    BlendHook,
    Hook,
    Positions,
    ReplaceHook,
    SaveInputsHook,
    SaveOutputsHook,
)
from taskvec.activations.indirect_effect import (
    IE_METHODS,
    IEResult,
    ie_scores,
    indirect_effects,
    top_heads,
)
from taskvec.activations.intervention import Intervention, resolve_sites, resolve_targets
from taskvec.activations.residual import extract_residual_vector, residual_means

__all__ = [
    "IE_METHODS",
    "ActivationVector",
    "AddHook",
    "BlendHook",
    "HeadMeans",
    "Hook",
    "IEResult",
    "Intervention",
    "Positions",
    "ReplaceHook",
    "SaveInputsHook",
    "SaveOutputsHook",
    "accuracy",
    "compare",
    "extract_function_vector",
    "extract_residual_vector",
    "function_vector",
    "head_activations",
    "head_contribution",
    "head_means",
    "ie_scores",
    "indirect_effects",
    "load_activation",
    "parse_heads",
    "residual_means",
    "resolve_sites",
    "resolve_targets",
    "save_activation",
    "sweep",
    "top_heads",
]
