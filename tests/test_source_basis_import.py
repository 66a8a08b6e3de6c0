"""uiuctml/TaskVectorBasis run directories import as taskvec bases with the source's recovery.

The fake runs below are written in the source's layout (method_info.json, basis_vectors.pt and
AWB.pt / pca_components.pt / random_selection.json) from vectors and decompositions computed
here, following the source's definitions: PCA basis ``U_m S_m`` with coefficients ``Vh``
(recovery ``mean + sum_m Vh[m, t] U_m S_m``), autoencoder basis ``S = V B`` with recovery
``S W``, random sample = the sampled tasks.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from taskvec.basis.source_import import import_source_basis
from taskvec.errors import FileFormatError, UserInputError
from taskvec.models.tiny import TINY_ARCHS
from taskvec.weights.vector import TaskVector

SHAPES = {"model.layers.0.mlp.weight": (6, 5), "model.layers.1.attn.weight": (4, 4), "model.norm.weight": (5,)}
T, M = 5, 3


def task_vectors(seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(T)]


def flat(v):
    return torch.cat([v[k].reshape(-1) for k in v])


def unflat(x, shapes):
    out, i = {}, 0
    for k, s in shapes.items():
        n = torch.Size(s).numel()
        out[k] = x[i:i + n].reshape(s).clone()
        i += n
    return out


def write_run(tmp_path, method, tvs):
    shapes = {k: tuple(v.shape) for k, v in tvs[0].items()}
    run = tmp_path / f"{method}_run"
    run.mkdir()
    V = torch.stack([flat(v) for v in tvs], 1)  # (D, T)
    info = {"method": method, "M": M, "seed": 0, "datasets": [f"task{i}" for i in range(T)]}
    if method == "PCABasisMethod":
        mean = V.mean(1)
        U, S, Vh = torch.linalg.svd(V - mean[:, None], full_matrices=False)
        basis = [unflat(U[:, m] * S[m], shapes) for m in range(M)]
        torch.save({"coefficients": Vh[:M], "mean_vector": mean, "singular_values": S[:M], "M_actual": M,
                    "total_dim": V.shape[0], "keys_order": list(shapes),
                    "param_shapes": {k: torch.Size(s) for k, s in shapes.items()},
                    "dataset_names": info["datasets"]}, run / "pca_components.pt")
        rec = [unflat(mean + sum(Vh[m, t] * U[:, m] * S[m] for m in range(M)), shapes) for t in range(T)]
    elif method == "AutoencoderBasisMethod":
        g = torch.Generator().manual_seed(1)
        A = torch.randn(T, M, generator=g)
        B = torch.softmax(A / 5.0, dim=0)
        W = torch.randn(M, T, generator=g)
        basis = [unflat(V @ B[:, m], shapes) for m in range(M)]
        torch.save({"A": A, "W": W, "B": B, "metadata": {"M": M, "steps": 10, "lr": 0.01, "tau_init": 5.0,
                                                          "method": method}}, run / "AWB.pt")
        info |= {"steps": 10}
        rec = [unflat(sum(W[m, t] * (V @ B[:, m]) for m in range(M)), shapes) for t in range(T)]
    else:
        sel = [0, 2, 3]
        basis = [dict(tvs[i]) for i in sel]
        (run / "random_selection.json").write_text(json.dumps({"seed": 0, "M": M, "selected_indices": sel}))
        rec = {i: tvs[i] for i in sel}
    (run / "method_info.json").write_text(json.dumps(info))
    torch.save({"basis_vectors": basis, "num_basis": M, "method": method}, run / "basis_vectors.pt")
    return run, basis, rec


@pytest.mark.parametrize("method", ["PCABasisMethod", "AutoencoderBasisMethod", "RandomSampleMethod"])
def test_imported_basis_recovers_what_the_source_recovers(tmp_path, method):
    tvs = task_vectors()
    run, basis, rec = write_run(tmp_path, method, tvs)
    b = import_source_basis(run, tmp_path / "b.safetensors")
    assert b.tasks == [f"task{i}" for i in range(T)] and b.M == M
    items = rec.items() if isinstance(rec, dict) else enumerate(rec)
    for t, want in items:
        got = b.recover(t)
        for k in SHAPES:
            torch.testing.assert_close(got[k], want[k].float(), atol=1e-5, rtol=1e-5)
    total = b.basis_sum()  # the source's addition: the sum of its basis vectors
    for k in SHAPES:
        torch.testing.assert_close(total[k], sum(a[k] for a in basis).float(), atol=1e-5, rtol=1e-5)
    paths = [TaskVector(v).save(tmp_path / f"t{i}.safetensors") for i, v in enumerate(tvs)]
    inf = b.info(vectors=paths)
    assert all(r["rel_error"] is None for r in inf["tasks"])  # the source stores no Gram
    assert all(r["rel_error_measured"] is not None for r in inf["tasks"])


def test_import_refuses_random_runs_unsafe_pickles_and_missing_files(tmp_path):
    tvs = task_vectors()
    run, _, _ = write_run(tmp_path, "PCABasisMethod", tvs)
    info = json.loads((run / "method_info.json").read_text())
    (run / "method_info.json").write_text(json.dumps(info | {"method": "RandomBasisMethod"}))
    with pytest.raises(UserInputError, match="basis build --method random"):
        import_source_basis(run, tmp_path / "x.safetensors")
    (run / "method_info.json").write_text(json.dumps(info))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (run / "pca_components.pt").write_bytes(pickle.dumps({"coefficients": Evil()}))
    with pytest.raises(FileFormatError, match="could not be read safely"):
        import_source_basis(run, tmp_path / "x.safetensors")
    (run / "pca_components.pt").unlink()
    with pytest.raises(Exception, match="pca_components.pt not found"):
        import_source_basis(run, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_basis_import(tmp_path, capsys):
    from taskvec.cli.main import main

    run, _, _ = write_run(tmp_path, "AutoencoderBasisMethod", task_vectors())
    assert main(["basis", "import", str(run), "--out", str(tmp_path / "b.safetensors"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "autoencoder" and out["M"] == M
    assert main(["basis", "import", str(tmp_path / "nope"), "--out", str(tmp_path / "c.safetensors")]) == 2


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_load_basis_script_flow_on_every_architecture(tmp_path, arch):
    """The source's scripts/load_basis.py: the merged vector is the sum of the loaded basis
    vectors, the per-task vectors come from the saved method; the same numbers through taskvec."""
    from taskvec.models.tiny import tiny_model

    base, _ = tiny_model(arch, seed=0)
    names = {n: tuple(p.shape) for n, p in base.named_parameters() if p.dim() == 2 and ".0." in n}
    tvs = [{k: v * 0.01 for k, v in tv.items()} for tv in task_vectors(seed=3, shapes=names)]
    run, basis_vectors, rec = write_run(tmp_path, "AutoencoderBasisMethod", tvs)
    b = import_source_basis(run, tmp_path / "b.safetensors")
    merged = sum((TaskVector(vector=bv) for bv in basis_vectors[1:]), TaskVector(vector=basis_vectors[0]))
    ids = torch.tensor([[1, 4, 2, 8, 5]])
    outs = []
    for vec in (merged, b.basis_sum(), TaskVector(vector=rec[2]), b.recover(2)):
        model, _ = tiny_model(arch, seed=0)
        vec.apply_to(model, scale=0.4)
        with torch.no_grad():
            outs.append(model(input_ids=ids).logits)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)  # addition: source vs taskvec
    torch.testing.assert_close(outs[3], outs[2], atol=1e-4, rtol=1e-4)  # a recovered task
    assert set(names) == set(b.shapes)
