"""lm-evaluation-harness model ``taskvec``: any base model plus any taskvec vector, scored the
way ``taskvec eval`` scores.

    taskvec-lm-eval --model taskvec \\
        --model_args pretrained=smollm2-135m,vector=sst2.safetensors,scale=1.0 --tasks my_task
    # Python: lm_eval.simple_evaluate(model=TaskvecLM(pretrained=..., vector=...), tasks=[...])

``taskvec-lm-eval`` is lm-eval's own command line (same arguments) with this model registered:
lm-eval 0.4 has no plugin mechanism for models (EleutherAI/lm-evaluation-harness#1621, #3282),
so a plain ``lm_eval --model taskvec`` cannot find a model defined outside lm-eval.

Model arguments: ``pretrained`` (an embedded name, a Hugging Face directory or a .gguf file),
``vector`` (a weight-space vector or ``BASIS#TASK``, applied to the weights; or a function,
residual or soft vector, injected into the activations at its recorded layer and positions),
``scale``, ``dtype``, ``device``, ``batch_size``, ``force``.

Scoring: ``loglikelihood(context, continuation)`` tokenizes the context with special tokens
and the continuation without, concatenates the ids and sums the continuation's log-probabilities
(taskvec's ``score_choices``), so a task YAML whose ``doc_to_text`` is the taskvec template,
``target_delimiter: ""`` and ``doc_to_choice`` the label words gives the same predictions as
``taskvec eval`` (tests/test_lm_eval.py; docs/lm_eval.md has a YAML to copy).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch

from taskvec.errors import UserInputError

try:  # the optional extra: pip install 'taskvec[lm-eval]'
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("lm-evaluation-harness is not installed: pip install 'taskvec[lm-eval]'") from exc


def _bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")


@register_model("taskvec")
class TaskvecLM(LM):
    """A taskvec model (base + optional vector) behind lm-eval's ``LM`` interface."""

    def __init__(self, pretrained: str = "smollm2-135m", vector: str | None = None, scale: float | None = None,
                 dtype: str = "float32", device: str = "cpu", batch_size: int | str = 16, force: bool = False,
                 max_length: int = 2048, **_: Any) -> None:
        super().__init__()
        from taskvec.cli.vector_opts import load_model_with_vector

        args = argparse.Namespace(model=str(pretrained), vector=vector or None,
                                  scale=None if scale in (None, "") else float(scale), dtype=str(dtype),
                                  device=str(device), force=_bool(force))
        self.model, self.tok, self.loaded, self._ctx = load_model_with_vector(args)
        self._ctx.__enter__()  # an activation vector's hooks stay for this object's life
        self.model.eval()
        self.batch_size = 16 if str(batch_size) == "auto" else int(batch_size)
        self.max_length = int(max_length)

    def close(self) -> None:
        """Remove an activation vector's hooks."""
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None

    # -- lm-eval's three request types ---------------------------------------------------
    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """Summed log-probability of each continuation after its context, and whether greedy
        decoding would have produced it."""
        from taskvec.eval.batching import encode, pad_id
        from taskvec.eval.scoring import logits_batches

        pairs = [r.args for r in requests]
        ctx_ids = encode(self.tok, [c for c, _ in pairs])
        cont_ids = encode(self.tok, [x for _, x in pairs], add_special_tokens=False)
        if any(not c for c in cont_ids):
            raise UserInputError("an lm-eval continuation tokenizes to nothing: check the task's doc_to_choice.")
        seqs = [(c + x)[-self.max_length:] for c, x in zip(ctx_ids, cont_ids)]
        keep = max(len(x) for x in cont_ids) + 1
        out: list[tuple[float, bool]] = [(0.0, False)] * len(seqs)
        for batch, logits in logits_batches(self.model, seqs, self.batch_size, pad_id(self.tok), keep):
            logp = logits.log_softmax(-1).cpu()  # (B, keep, V)
            for row, j in enumerate(batch.index):
                target = torch.tensor(cont_ids[j])
                pos = torch.arange(keep - 1 - len(target), keep - 1)  # logits at t predict token t+1
                lp = logp[row, pos]
                out[j] = (float(lp[torch.arange(len(target)), target].sum()), bool((lp.argmax(-1) == target).all()))
        return out

    @torch.no_grad()
    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        """Log-probability of each whole text (BOS-conditioned, windows of ``max_length``)."""
        from taskvec.eval.batching import encode

        out = []
        dev = next(self.model.parameters()).device
        for (text,) in (r.args for r in requests):
            ids = encode(self.tok, [text])[0]
            total = 0.0
            for start in range(0, max(len(ids) - 1, 0), self.max_length - 1):
                chunk = torch.tensor([ids[start:start + self.max_length]], device=dev)  # (1, T)
                logp = self.model(input_ids=chunk, use_cache=False).logits[0, :-1].float().log_softmax(-1)
                total += float(logp[torch.arange(chunk.shape[1] - 1), chunk[0, 1:]].sum())
            out.append(total)
        return out

    @torch.no_grad()
    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """Greedy completions, cut at the first of the request's ``until`` strings."""
        from taskvec.eval.scoring import greedy_generate

        out = []
        for context, kwargs in (r.args for r in requests):
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            text = greedy_generate(self.model, self.tok, [context], int(kwargs.get("max_gen_toks", 32)), 1)[0]
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
        return out


def cli(argv: Sequence[str] | None = None) -> None:
    """``taskvec-lm-eval``: lm-eval's command line with the ``taskvec`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm_eval", *argv]
    cli_evaluate()


__all__ = ["TaskvecLM", "cli"]
