"""Bridges to other tools (optional extras): lm-evaluation-harness (``lm_eval_harness``)."""

from __future__ import annotations

import sys


def lm_eval_cli() -> int:
    """``taskvec-lm-eval``: lm-eval's command line with the ``taskvec`` model registered."""
    try:
        from taskvec.integrations.lm_eval_harness import cli
    except ImportError as exc:
        print(f"taskvec-lm-eval: error: {exc}", file=sys.stderr)
        return 2
    cli()
    return 0


__all__ = ["lm_eval_cli"]
