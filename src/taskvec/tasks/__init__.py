"""Tasks: prompt templates, answer words, packaged data splits and few-shot prompts.

``get_task("sst2")`` returns a built-in task (classification: GLUE-style tasks, TREC,
AG News; generation: the function-vector ICL tasks such as ``antonym``); a path to a
``.yaml`` file loads a user task (see ``taskvec.tasks.userfile``).
"""

from taskvec.tasks.catalog import get_task, list_tasks, register_task
from taskvec.tasks.fewshot import (
    DEMO_MODES,
    build_fewshot_prompt,
    fewshot_prompts,
    shared_fewshot_prompts,
)
from taskvec.tasks.task import Task
from taskvec.tasks.userfile import load_task_file

__all__ = [
    "Task",
    "build_fewshot_prompt",
    "fewshot_prompts",
    "shared_fewshot_prompts",
    "DEMO_MODES",
    "get_task",
    "list_tasks",
    "load_task_file",
    "register_task",
]
