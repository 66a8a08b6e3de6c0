"""Merging task vectors: task arithmetic, TIES, DARE, TSV-M and Model Breadcrumbs.

>>> from taskvec.weights.merge import merge, merge_files, get_method
>>> merged = merge("ties", [tv1, tv2, tv3], density=0.2, lam=1.0)       # in memory
>>> merge_files("tsv", ["a.safetensors", "b.safetensors"], "ab.safetensors")  # streaming

Every method merges one tensor at a time (``MergeMethod.merge_tensor``), so the streaming
file merge and the in-memory merge share their code. See docs/merging.md.
"""

from taskvec.weights.merge.base import MergeMethod, Param
from taskvec.weights.merge.driver import MergeReport, merge, merge_files, merge_vectors
from taskvec.weights.merge.registry import get_method, list_methods, methods

__all__ = [
    "MergeMethod",
    "MergeReport",
    "Param",
    "get_method",
    "list_methods",
    "merge",
    "merge_files",
    "merge_vectors",
    "methods",
]
