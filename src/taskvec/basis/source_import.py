"""Import a basis saved by uiuctml/TaskVectorBasis (a ``_basis_runs/<run>`` directory).

The source saves, per run: ``method_info.json`` (method class name, M, seed, datasets),
``basis_vectors.pt`` (``{"basis_vectors": [M dicts name -> tensor], "num_basis", "method"}``)
and the method's artifact:

* ``AutoencoderBasisMethod``: ``AWB.pt`` ``{"A" (T, M), "W" (M, T), "B" (T, M), "metadata"}``;
  basis ``S = V B``, recovery ``V_hat = S W``;
* ``PCABasisMethod``: ``pca_components.pt`` ``{"coefficients" (M, T) = Vh, "mean_vector" (D,),
  "singular_values" (M,), "keys_order", "param_shapes", ...}``; variance-scaled basis
  ``s_m = U_m S_m``, recovery ``v_t = mean + sum_m Vh[m, t] s_m``;
* ``RandomSampleMethod``: ``random_selection.json`` ``{"selected_indices", ...}``; the basis
  vectors are the sampled tasks (the source recovers nothing else).

Each becomes a taskvec basis file with the same recovery (PCA in taskvec's convention: unit
components ``U_m`` with coefficients ``Vh[m, t] S_m``, mixing ``(I - 11^T/T) Vh^T / S``,
exactly the source's reconstruction). Every ``.pt`` file is read with
``torch.load(weights_only=True)``: no pickled code runs. The source's Gram matrix of the task
vectors is not saved, so an imported basis has no stored error estimate: pass the original
vectors to ``taskvec basis info --vectors`` to measure it. ``RandomBasisMethod`` runs are
refused (its atoms come from the source's own random generator over its flattening order;
rebuild with ``taskvec basis build --method random``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from taskvec.basis.basis import KIND, Basis
from taskvec.basis.gram import layer_key, sort_groups
from taskvec.errors import FileFormatError, MissingFileError, UserInputError
from taskvec.formats import encode_metadata, envelope, write_file
from taskvec.io_utils import check_writable

#: source class name -> taskvec method
METHOD_NAMES = {"AutoencoderBasisMethod": "autoencoder", "PCABasisMethod": "pca", "RandomSampleMethod": "random_sample"}


def _load_pt(path: Path) -> Any:
    if not path.exists():
        raise MissingFileError(f"{path} not found: pass a TaskVectorBasis run directory (it holds method_info.json, "
                               "basis_vectors.pt and the method's artifact).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a file problem
        raise FileFormatError(f"{path} could not be read safely ({type(exc).__name__}: {str(exc)[:120]}); "
                              "only tensors, numbers, strings, lists and dicts are accepted.") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise MissingFileError(f"{path} not found: pass a TaskVectorBasis run directory.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path} is not valid JSON ({exc.msg}).") from None
    if not isinstance(data, dict):
        raise FileFormatError(f"{path} is not a JSON object.")
    return data


def _atoms(run: Path) -> list[dict[str, torch.Tensor]]:
    data = _load_pt(run / "basis_vectors.pt")
    atoms = data.get("basis_vectors") if isinstance(data, dict) else None
    if not isinstance(atoms, list) or not atoms or not all(isinstance(a, dict) for a in atoms):
        raise FileFormatError(f"{run / 'basis_vectors.pt'} holds no list of basis vectors.")
    return [{k: v for k, v in a.items() if isinstance(v, torch.Tensor) and v.is_floating_point()} for a in atoms]


def _fit(method: str, run: Path, info: dict[str, Any], atoms: list[dict[str, torch.Tensor]], T: int
         ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], dict[str, torch.Tensor] | None, dict[str, Any]]:
    """(small tensors, taskvec atoms, PCA mean or None, fit info) in taskvec's conventions."""
    M = len(atoms)
    if method == "autoencoder":
        awb = _load_pt(run / "AWB.pt")
        W, B = awb["W"].double(), awb["B"].double()  # (M, T), (T, M)
        if W.shape != (M, T) or B.shape != (T, M):
            raise FileFormatError(f"{run / 'AWB.pt'}: W {tuple(W.shape)} / B {tuple(B.shape)} do not fit M={M}, T={T}.")
        return {"coefficients": W.T[None], "mix": B[None], "ae_logits": awb["A"].double()[None]}, atoms, None, {
            "source_metadata": {k: v for k, v in dict(awb.get("metadata") or {}).items() if isinstance(v, (int, float, str))}}
    if method == "pca":
        pca = _load_pt(run / "pca_components.pt")
        Vh, S = pca["coefficients"].double(), pca["singular_values"].double()  # (M, T), (M,)
        if Vh.shape != (M, T) or S.shape != (M,):
            raise FileFormatError(f"{run / 'pca_components.pt'}: coefficients {tuple(Vh.shape)} do not fit M={M}, T={T}.")
        safe = S.clamp_min(1e-30)
        unit = [{k: (v.double() / float(s)).float() for k, v in a.items()} for a, s in zip(atoms, safe)]
        mean_flat, keys = pca["mean_vector"].float(), list(pca["keys_order"])
        shapes = {k: tuple(int(x) for x in pca["param_shapes"][k]) for k in keys}
        mean, start = {}, 0
        for k in keys:
            n = int(torch.Size(shapes[k]).numel())
            if k in atoms[0]:
                mean[k] = mean_flat[start:start + n].reshape(shapes[k]).clone()
            start += n
        C = torch.eye(T, dtype=torch.float64) - 1.0 / T
        small = {"coefficients": (Vh.T * S)[None], "mix": (C @ Vh.T / safe)[None], "singular_values": S[None]}
        return small, unit, mean, {"components": M}
    sel = _read_json(run / "random_selection.json").get("selected_indices")
    if not isinstance(sel, list) or len(sel) != M or not all(isinstance(i, int) and 0 <= i < T for i in sel):
        raise FileFormatError(f"{run / 'random_selection.json'}: selected_indices must be {M} task indices.")
    mix = torch.zeros(T, M, dtype=torch.float64)
    mix[sel, torch.arange(M)] = 1.0
    return {"coefficients": mix.clone()[None], "mix": mix[None]}, atoms, None, {"selected": sel}


def import_source_basis(run_dir: str | os.PathLike, out: str | os.PathLike, tasks: list[str] | None = None) -> Basis:
    """A TaskVectorBasis run directory as a taskvec basis file ``out`` (see the module docstring)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise MissingFileError(f"{run} is not a directory: pass a TaskVectorBasis run directory (_basis_runs/<run>).")
    out = check_writable(out)
    if out.suffix != ".safetensors":
        raise UserInputError(f"the basis file must end in .safetensors, got {out.name}.")
    info = _read_json(run / "method_info.json")
    source_method = str(info.get("method"))
    if source_method == "RandomBasisMethod":
        raise UserInputError(f"{run} is a RandomBasisMethod run: its atoms come from the source's own random "
                             "generator; rebuild the basis with `taskvec basis build --method random`.")
    if source_method not in METHOD_NAMES:
        raise FileFormatError(f'{run / "method_info.json"}: unknown method "{source_method}" (known: {", ".join(METHOD_NAMES)}).')
    method = METHOD_NAMES[source_method]
    names = tasks or [str(d) for d in info.get("datasets") or []]
    atoms = _atoms(run)
    T = len(names)
    if T < 1:
        raise UserInputError(f"{run / 'method_info.json'} lists no datasets: pass the task names (--tasks a,b,c).")
    small, atoms, mean, fit_info = _fit(method, run, info, atoms, T)
    shapes = {k: tuple(v.shape) for k, v in atoms[0].items()}
    tensors: dict[str, torch.Tensor] = dict(small)
    for m, a in enumerate(atoms):
        if {k: tuple(v.shape) for k, v in a.items()} != shapes:
            raise FileFormatError(f"{run / 'basis_vectors.pt'}: basis vector {m} has other tensors than vector 0.")
        tensors |= {f"basis::{m}::{k}": v.float().contiguous() for k, v in a.items()}
    if mean is not None:
        tensors |= {f"mean::{k}": v.float().contiguous() for k, v in mean.items()}
    meta = envelope(KIND, {
        "method": method, "M": str(len(atoms)), "T": str(T), "seed": str(int(info.get("seed") or 0)),
        "per_layer": "false", "tasks": names, "groups": ["all"],
        "stats_groups": sort_groups(sorted({layer_key(k) for k in shapes})),
        "tensor_shapes": [[k, list(s)] for k, s in shapes.items()], "options": {},
        "fit_info": [fit_info], "imported": {"from": "uiuctml/TaskVectorBasis", "method": source_method,
                                             "run": run.name},
        "collection": {},
    })
    write_file(out, tensors, encode_metadata(meta))
    return Basis.load(out)


__all__ = ["METHOD_NAMES", "import_source_basis"]
