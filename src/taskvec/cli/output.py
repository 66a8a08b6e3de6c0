"""What commands print: JSON on stdout, aligned text tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["fmt", "format_mib", "print_json", "print_table"]


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], title: str | None = None) -> None:
    """A plain aligned text table."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if title:
        print(title)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def format_mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"
