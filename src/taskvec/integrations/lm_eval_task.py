"""Export a taskvec task as an lm-evaluation-harness task (YAML + JSON Lines), offline.

The prompts are rendered by taskvec (``task.prompt``) into the data file, so lm-eval sees
exactly the text ``taskvec eval`` scores: ``doc_to_text`` is the rendered prompt, the choices
are the task's label words, ``target_delimiter`` is empty (label words carry their leading
space), and ``dataset_path: json`` reads the local file (no network).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from taskvec.errors import UserInputError
from taskvec.io_utils import atomic_path


def lm_eval_task_yaml(name: str, data_file: Path, choices: list[str]) -> str:
    """The YAML text of a multiple-choice lm-eval task over ``data_file``."""
    return "\n".join([
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_file))}",
        "test_split: test",
        "output_type: multiple_choice",
        'doc_to_text: "{{taskvec_prompt}}"',
        "doc_to_target: taskvec_label",
        f"doc_to_choice: {json.dumps(choices)}",
        'target_delimiter: ""',
        "metric_list:",
        "  - metric: acc",
        "metadata:",
        "  version: 1.0",
        "",
    ])


def write_lm_eval_task(task: Any, out_dir: str | Path, split: str | None = None, limit: int | None = None,
                       name: str | None = None) -> Path:
    """Write ``<out_dir>/<name>.yaml`` and ``<name>.jsonl`` for a classification task; returns the YAML."""
    if task.kind != "classification":
        raise UserInputError(f"task {task.name} is {task.kind}: only classification tasks export to lm-eval "
                             "multiple_choice tasks.")
    split = split or task.eval_split
    name = name or f"taskvec_{task.name}".replace("-", "_")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = task.load(split, limit=limit)
    data = out / f"{name}.jsonl"
    with atomic_path(data) as tmp:
        Path(tmp).write_text("".join(json.dumps({"taskvec_prompt": task.prompt(ex), "taskvec_label": task.label_index(ex)})
                                     + "\n" for ex in rows), encoding="utf-8")
    yaml_path = out / f"{name}.yaml"
    with atomic_path(yaml_path) as tmp:
        Path(tmp).write_text(lm_eval_task_yaml(name, data.resolve(), list(task.choices())), encoding="utf-8")
    return yaml_path


__all__ = ["lm_eval_task_yaml", "write_lm_eval_task"]
