"""Task vector bases: compress T task vectors into M basis vectors and do task arithmetic there.

Implements *Task Vector Bases: A Unified and Scalable Framework for Compressed Task Arithmetic*
(Zeng et al., TMLR) for language-model task vectors, streaming over the vector files (memory
grows with T x one row block, not T x the model). Methods: ``pca``, ``autoencoder``, ``random``,
``random_sample`` (see ``docs/bases.md``).

    >>> from taskvec.basis import build_basis
    >>> b = build_basis(["a.safetensors", "b.safetensors", "c.safetensors"], "B.safetensors", method="pca", m=2)
    >>> v = b.recover("a"); merged = b.addition(0.5); neg = b.negation("a"); b.info()
"""

from taskvec.basis.arithmetic import ReconstructionWarning
from taskvec.basis.basis import Basis, load_basis
from taskvec.basis.build import build_basis
from taskvec.basis.gram import streaming_gram
from taskvec.basis.opening import is_basis_file, load_basis_or_vector, load_one_vector, open_sources
from taskvec.basis.registry import (
    METHODS,
    BasisMethod,
    GroupFit,
    GroupStats,
    get_method,
    method_names,
)

__all__ = [
    "METHODS",
    "Basis",
    "BasisMethod",
    "GroupFit",
    "GroupStats",
    "ReconstructionWarning",
    "build_basis",
    "get_method",
    "is_basis_file",
    "load_basis",
    "load_basis_or_vector",
    "load_one_vector",
    "method_names",
    "open_sources",
    "streaming_gram",
]
