"""``taskvec models``: the embedded models and whether they are installed and cached."""

from __future__ import annotations

import argparse
from typing import Any

from taskvec.cli.options import add_json, new_command
from taskvec.cli.output import print_json, print_table
from taskvec.model_catalog import DEFAULT_MODEL, EMBEDDED, cache_dir, is_installed


def register(sub: Any) -> None:
    p = new_command(sub, "models", "list the embedded models")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in EMBEDDED.names():
        e = EMBEDDED.get(name)
        cached = sorted((cache_dir() / "models").glob(f"{name}-*/config.json"))
        rows.append(
            {
                "name": name,
                "default": name == DEFAULT_MODEL,
                "installed": is_installed(e),
                "cached": bool(cached),
                "description": e.description,
                "install": e.install_hint,
            }
        )
    if args.json:
        print_json({"models": rows, "cache_dir": str(cache_dir())})
        return 0
    print_table(
        [
            [r["name"] + (" (default)" if r["default"] else ""), "yes" if r["installed"] else "no",
             "yes" if r["cached"] else "no", r["description"]]
            for r in rows
        ],
        ["model", "installed", "cached", "description"],
    )
    print(f"\ncache: {cache_dir()} (set TASKVEC_CACHE to move it). Any HF model directory, "
          ".gguf file or hub id also works as --model.")
    return 0
