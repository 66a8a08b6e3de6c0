"""The paper's autoencoder basis, trained on the Gram matrix alone.

Learn ``A`` (T x M) and ``W`` (M x T) minimising ``tr(E^T G E)`` with
``E = softmax(A / tau, dim=0) @ W - I``: the columns of ``P = softmax(A / tau, dim=0)`` are
convex weights over the tasks, the basis is ``S = V P`` (every basis vector a convex combination
of task vectors) and task i is reconstructed as ``S W[:, i]``. Since ``V E`` is the matrix of
reconstruction errors, ``tr(E^T G E) = sum_i ||v_i - S W[:, i]||^2`` needs only ``G = V^T V``.

We minimise it normalised by ``tr(G)`` (the loss is the fraction of the collection's squared norm
that is not reconstructed; 1.0 at the start, where ``W = 0``), with Adam, from a seeded
initialisation, in float64. With ``refit`` (default) ``W`` is finally replaced by the least-squares
optimum for the learned basis, ``W = (P^T G P)^+ P^T G``, which can only lower the loss.

The options of uiuctml/TaskVectorBasis's trainer are available too (docs/seeds.md):
``encoder`` (``softmax`` | ``linear``: ``P = A / tau``), ``w_activation`` (``linear`` |
``softmax``: the decoder is ``softmax(W / tau, dim=0)``), ``weight_decay`` (Adam's L2 term),
``grad_clip`` (max gradient norm), ``batch_cols`` (a random minibatch of that many columns of
``E`` per step), ``anneal_every`` / ``anneal_factor`` (``tau <- max(0.1, tau * factor)`` every
n steps) and ``loss_norm`` (``trace``: divide by ``tr(G)``; ``t2``: by ``T^2``, ``T * b`` for a
minibatch, as the source does). With any of them set, gradients come from autograd instead of the
closed form. The source's script (``scripts/build_ae_basis.py``) trains with ``tau=5,
steps=6000, lr=0.01, weight_decay=1e-6, loss_norm=t2, refit=false``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from taskvec.basis.registry import METHODS, BasisMethod, GroupFit, GroupStats
from taskvec.errors import UserInputError

log = logging.getLogger("taskvec.basis")


def ae_loss(G: torch.Tensor, A: torch.Tensor, W: torch.Tensor, tau: float) -> torch.Tensor:
    """``tr(E^T G E)`` with ``E = softmax(A / tau, dim=0) @ W - I`` (G as given, not normalised)."""
    T = G.shape[0]
    E = torch.softmax(A / tau, dim=0) @ W - torch.eye(T, dtype=G.dtype)  # (T, T)
    return (E * (G @ E)).sum()


@torch.no_grad()
def ae_grads_(G: torch.Tensor, A: torch.Tensor, W: torch.Tensor, tau: float) -> float:
    """Set ``A.grad`` and ``W.grad`` of ``tr(E^T G E)`` (closed form, G symmetric); return the loss.

    ``dL/dE = 2 G E``, ``dL/dW = P^T dL/dE``, ``dL/dP = dL/dE W^T`` and, through the column-wise
    softmax, ``dL/dA = P * (dL/dP - sum_rows(P * dL/dP)) / tau``.
    """
    T = G.shape[0]
    P = torch.softmax(A / tau, dim=0)  # (T, M)
    E = P @ W - torch.eye(T, dtype=G.dtype)  # (T, T)
    GE = G @ E
    dE = 2.0 * GE
    dP = dE @ W.T  # (T, M)
    assert A.grad is not None and W.grad is not None
    W.grad.copy_(P.T @ dE)
    A.grad.copy_(P * (dP - (P * dP).sum(dim=0, keepdim=True)) / tau)
    return float((E * GE).sum())


def _full_loss(G: torch.Tensor, P: torch.Tensor, W: torch.Tensor) -> float:
    """``tr(E^T G E)`` for a basis mix ``P`` (T, M) and decoder ``W`` (M, T)."""
    E = P @ W - torch.eye(G.shape[0], dtype=G.dtype)
    return float((E * (G @ E)).sum())


def lstsq_decoder(G: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """The W (M x T) minimising ``tr(E^T G E)`` for a fixed basis mix ``P`` (T x M)."""
    return torch.linalg.pinv(P.T @ G @ P, hermitian=True, rtol=1e-12) @ (P.T @ G)


#: the source-compatible options and their defaults (the defaults keep taskvec's own training)
SOURCE_OPTIONS: dict[str, Any] = {
    "encoder": "softmax", "w_activation": "linear", "weight_decay": 0.0, "grad_clip": None,
    "batch_cols": None, "anneal_every": None, "anneal_factor": None, "loss_norm": "trace",
}


def _encode(A: torch.Tensor, tau: float, encoder: str) -> torch.Tensor:
    return torch.softmax(A / tau, dim=0) if encoder == "softmax" else A / tau  # (T, M)


def _decode(W: torch.Tensor, tau: float, w_activation: str) -> torch.Tensor:
    return W if w_activation == "linear" else torch.softmax(W / tau, dim=0)  # (M, T)


def _check_source_options(o: dict[str, Any]) -> None:
    for key, allowed in (("encoder", ("softmax", "linear")), ("w_activation", ("linear", "softmax")),
                         ("loss_norm", ("trace", "t2"))):
        if o[key] not in allowed:
            raise UserInputError(f"autoencoder {key} must be one of {', '.join(allowed)}, got {o[key]!r}.")
    if (o["anneal_every"] is None) != (o["anneal_factor"] is None):
        raise UserInputError("give anneal_every and anneal_factor together.")
    for key in ("grad_clip", "batch_cols", "anneal_every", "anneal_factor"):
        if o[key] is not None and not float(o[key]) > 0:
            raise UserInputError(f"autoencoder {key} must be positive, got {o[key]!r}.")
    if not float(o["weight_decay"]) >= 0:
        raise UserInputError(f"autoencoder weight_decay must be >= 0, got {o['weight_decay']!r}.")


def _autograd_loss(G: torch.Tensor, A: torch.Tensor, W: torch.Tensor, tau: float, o: dict[str, Any],
                   gen: torch.Generator) -> torch.Tensor:
    """The loss with the source's options (minibatch columns drawn from ``gen``)."""
    T = G.shape[0]
    E = _encode(A, tau, o["encoder"]) @ _decode(W, tau, o["w_activation"]) - torch.eye(T, dtype=G.dtype)
    if o["batch_cols"] is not None:
        E = E[:, torch.randint(0, T, (int(o["batch_cols"]),), generator=gen)]  # (T, b)
    value = (E * (G @ E)).sum()
    if o["loss_norm"] == "t2":
        value = value / (T * E.shape[1])
    return value


def train_autoencoder(
    G: torch.Tensor,
    M: int,
    seed: int = 0,
    tau: float = 5.0,
    steps: int = 4000,
    lr: float = 1e-2,
    refit: bool = True,
    log_every: int = 200,
    progress: bool = False,
    **source_options: Any,
) -> GroupFit:
    """Fit ``A`` and ``W`` on one Gram matrix; returns mix = softmax(A/tau), coefficients = W^T.

    ``source_options``: the keys of :data:`SOURCE_OPTIONS` (see the module docstring).
    """
    unknown = sorted(set(source_options) - set(SOURCE_OPTIONS))
    if unknown:
        raise UserInputError(f"unknown autoencoder option(s) {', '.join(unknown)}; known: {', '.join(SOURCE_OPTIONS)}.")
    o = SOURCE_OPTIONS | {k: v for k, v in source_options.items() if v is not None}
    _check_source_options(o)
    custom = o != SOURCE_OPTIONS
    if not tau > 0:
        raise UserInputError(f"--tau must be positive, got {tau}.")
    if steps < 0:
        raise UserInputError(f"--steps must be >= 0, got {steps}.")
    if not lr > 0:
        raise UserInputError(f"--lr must be positive, got {lr}.")
    G = G.double()
    T = G.shape[0]
    norm = float(torch.trace(G))
    # loss = unreconstructed fraction of sum_i ||v_i||^2 (trace), or the source's scaling (t2)
    Gn = G / norm if norm > 0 and o["loss_norm"] == "trace" else G
    gen = torch.Generator().manual_seed(int(seed))
    A = torch.randn(T, M, generator=gen, dtype=torch.float64)
    W = torch.zeros(M, T, dtype=torch.float64)
    A.grad, W.grad = torch.zeros_like(A), torch.zeros_like(W)
    opt = torch.optim.Adam([A, W], lr=lr, weight_decay=float(o["weight_decay"]))
    if custom:
        A.requires_grad_(True)
        W.requires_grad_(True)
    history: list[list[float]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="autoencoder", unit="step", leave=False)
    first = None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # T x T matrices: threads only add overhead (and contention)
    try:
        for step in range(1, steps + 1):
            if custom:
                opt.zero_grad(set_to_none=True)
                loss = _autograd_loss(Gn, A, W, tau, o, gen)
                loss.backward()
                if o["grad_clip"] is not None:
                    torch.nn.utils.clip_grad_norm_([A, W], float(o["grad_clip"]))
                value = float(loss.detach())
            else:
                value = ae_grads_(Gn, A, W, tau)
            opt.step()
            if o["anneal_every"] is not None and step % int(o["anneal_every"]) == 0:
                tau = max(0.1, tau * float(o["anneal_factor"]))
            if first is None:
                first = value
            if step == 1 or step % log_every == 0 or step == steps:
                history.append([step, value])
                log.info("autoencoder step %d loss %.6g", step, value)
                if bar is not None:
                    bar.set_postfix(loss=f"{value:.4g}")
            if bar is not None:
                bar.update(1)
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
    with torch.no_grad():
        A_ = A.detach()
        P = _encode(A_, tau, o["encoder"])  # (T, M); softmax: columns sum to 1
        W_ = _decode(W.detach(), tau, o["w_activation"])
        trained = _full_loss(Gn, P, W_)
        final = trained
        if refit:
            W_ref = lstsq_decoder(Gn, P)
            refitted = _full_loss(Gn, P, W_ref)
            if refitted <= trained:
                W_, final = W_ref, refitted
        log.info("autoencoder loss %.6g -> %.6g (after training %.6g)", first if first is not None else final,
                 final, trained)
    info = {
        "loss_initial": first if first is not None else trained,
        "loss_trained": trained,
        "loss_final": final,
        "loss_history": history,
        "loss_definition": "tr(E^T G E) / tr(G), E = softmax(A/tau, dim=0) W - I"
        if o["loss_norm"] == "trace" else "tr(E^T G E) / T^2 (the source's scaling)",
        "tau_final": tau,
        "relative_error": _full_loss(G / norm if norm > 0 else G, P, W_) ** 0.5,
    } | ({"source_options": o} if custom else {})
    return GroupFit(coefficients=W_.T.contiguous(), mix=P, logits=A_, info=info)


class AutoencoderBasis(BasisMethod):
    name = "autoencoder"
    summary = "learned convex combinations of task vectors (softmax encoder, linear decoder) on the Gram"
    options = {"tau": 5.0, "steps": 4000, "lr": 1e-2, "refit": True, **SOURCE_OPTIONS}

    def fit(self, stats: GroupStats, M: int, seed: int, options: dict[str, Any], progress: bool = False) -> GroupFit:
        extra = {k: options[k] for k in SOURCE_OPTIONS if k in options}
        return train_autoencoder(stats.gram, M, seed=seed, tau=float(options["tau"]), steps=int(options["steps"]),
                                 lr=float(options["lr"]), refit=bool(options["refit"]), progress=progress, **extra)


METHODS.register("autoencoder", AutoencoderBasis())
