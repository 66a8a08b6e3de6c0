"""taskvec's autoencoder with uiuctml/TaskVectorBasis's settings vs that project's own GramTrainer.

The same Gram matrices of small random vectors (T = 8 tasks, D = 4000, rank-3 signal plus noise;
M in {2, 4}; 5 seeds) go to both; the table reports each one's relative reconstruction error
sqrt(sum_i ||v_i - v_i_hat||^2 / sum_i ||v_i||^2), taskvec's defaults, and the best any
M-dimensional basis can do (the rank-M bound from the Gram's eigenvalues).

    python benchmarks/compare_ae_source.py PATH/TO/TaskVectorBasis benchmarks/results/ae_source.json

The source is imported from its own checkout, run beside taskvec (none of its code is in this
repository); its ``src.basis_utils`` is stubbed because it imports image-model code that the
trainer does not use.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import types

import torch

from taskvec.basis.autoencoder import train_autoencoder

SOURCE_SETTINGS = {"tau": 5.0, "steps": 6000, "lr": 0.01, "weight_decay": 1e-6}  # its build_ae_basis.py


def rel_err(G: torch.Tensor, P: torch.Tensor, W: torch.Tensor) -> float:
    E = P @ W - torch.eye(G.shape[0], dtype=G.dtype)  # (T, T)
    return float(((E * (G @ E)).sum() / torch.trace(G)).sqrt())


def main(source: str, out: str) -> None:
    sys.path.insert(0, source)
    stub = types.ModuleType("src.basis_utils")
    stub._accum_add_ = lambda *a, **k: None
    sys.modules["src.basis_utils"] = stub
    from src.basis_vectors import GramTrainer  # the source's own trainer

    rows = []
    for seed in range(5):
        g = torch.Generator().manual_seed(100 + seed)
        T, D = 8, 4000
        V = torch.randn(D, 3, generator=g) @ torch.randn(3, T, generator=g) + 0.3 * torch.randn(D, T, generator=g)
        G32 = ((V * 0.01).T @ (V * 0.01)).float()  # the source builds its Gram in float32
        for M in (2, 4):
            t0 = time.perf_counter()
            trainer = GramTrainer(G32, T=T, M=M, tau=SOURCE_SETTINGS["tau"], device="cpu", lr=SOURCE_SETTINGS["lr"],
                                  weight_decay=SOURCE_SETTINGS["weight_decay"], grad_clip=None, batch_cols=None,
                                  seed=seed)
            with contextlib.redirect_stdout(io.StringIO()):
                A, W, tau = trainer.train(steps=SOURCE_SETTINGS["steps"], log_every=10**9)
            t_src = time.perf_counter() - t0
            src = rel_err(G32.double(), torch.softmax(A.double() / tau, dim=0), W.double())
            t0 = time.perf_counter()
            ours = train_autoencoder(G32.double(), M, seed=seed, refit=False, loss_norm="t2", **SOURCE_SETTINGS)
            t_ours = time.perf_counter() - t0
            defaults = train_autoencoder(G32.double(), M, seed=seed)
            ev = torch.linalg.eigvalsh(G32.double()).flip(0)
            rows.append({
                "seed": seed, "M": M, "source": src, "taskvec_source_settings": ours.info["relative_error"],
                "taskvec_defaults": defaults.info["relative_error"],
                "rank_M_bound": float((ev[M:].sum() / ev.sum()).sqrt()),
                "source_s": round(t_src, 2), "taskvec_s": round(t_ours, 2),
            })
            print(json.dumps(rows[-1]))
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ae_source.json")
