"""Few-shot (in-context) prompts: k demonstrations, then the query prompt.

A prompt is ``demo_1 + sep + ... + demo_k + sep + task.prompt(query)`` where each demo is
``task.prompt(d) + task.answer(d)`` and ``sep`` is ``task.separator`` ("\\n\\n").
Demonstrations are drawn at random from ``pool`` without replacement and never include the
query: not the same object, not an equal dict, and not an example whose prompt text equals
the query's prompt (a duplicate question would give its answer away).

``shuffle_labels=True`` builds the *shuffled-label* prompts of the function-vector paper
(Todd et al. 2024, also Min et al. 2022): the demonstrations keep their inputs but their
answers are replaced by random ones, which breaks the input-answer mapping while keeping
the format and the answer space. Classification: each demo gets a label word drawn uniformly
from ``task.choices()``. Generation: each demo gets the output of another, randomly drawn,
pool example. Either may coincide with the true answer by chance.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from taskvec.errors import UserInputError
from taskvec.tasks.task import Task

_FULL_SCAN = 64  # pools up to 4*k + this size are scanned fully instead of sampled


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise UserInputError(f"k (number of demonstrations) must be an integer >= 0, got {k!r}.")


def _usable(task: Task, query: dict) -> Callable[[dict], bool]:
    qprompt = task.prompt(query)

    def ok(d: dict) -> bool:
        return not (d is query or d == query or task.prompt(d) == qprompt)

    return ok


def _too_small(k: int, usable: int) -> UserInputError:
    return UserInputError(
        f"k={k} demonstrations requested but the pool has only {usable} usable examples "
        "(the query and copies of it are excluded); lower k or use a larger pool."
    )


def _pick(
    pool: Sequence[dict], k: int, ok: Callable[[dict], bool], rng: random.Random
) -> list[int]:
    """k distinct pool indices whose examples pass ``ok``, in random order."""
    n = len(pool)
    if n <= 4 * k + _FULL_SCAN:
        usable = [i for i in range(n) if ok(pool[i])]
        if len(usable) < k:
            raise _too_small(k, len(usable))
        return rng.sample(usable, k)
    # Large pool: rejection sampling, so the cost does not grow with the pool size.
    chosen: list[int] = []
    seen: set[int] = set()
    while len(chosen) < k and len(seen) < n // 2:
        i = rng.randrange(n)
        if i not in seen:
            seen.add(i)
            if ok(pool[i]):
                chosen.append(i)
    if len(chosen) < k:
        rest = [i for i in range(n) if i not in seen and ok(pool[i])]
        if len(chosen) + len(rest) < k:
            raise _too_small(k, len(chosen) + len(rest))
        chosen += rng.sample(rest, k - len(chosen))
    return chosen


def _other_answer(
    task: Task, pool: Sequence[dict], i: int, ok: Callable[[dict], bool], rng: random.Random
) -> str:
    """The answer of a random usable pool example other than ``pool[i]``."""
    n = len(pool)
    for _ in range(32):
        j = rng.randrange(n)
        if j != i and ok(pool[j]):
            return task.answer(pool[j])
    others = [j for j in range(n) if j != i and ok(pool[j])]
    return task.answer(pool[rng.choice(others)]) if others else task.answer(pool[i])


def build_fewshot_prompt(
    task: Task,
    query: dict,
    pool: Sequence[dict],
    k: int,
    rng: random.Random,
    shuffle_labels: bool = False,
) -> str:
    """A k-shot prompt for ``query`` with demonstrations drawn from ``pool`` using ``rng``.

    Raises ``UserInputError`` when the pool has fewer than k usable examples.
    """
    _check_k(k)
    if k == 0:
        return task.prompt(query)
    ok = _usable(task, query)
    demos = _demos(task, pool, _pick(pool, k, ok, rng), ok, rng, shuffle_labels)
    return task.separator.join([*demos, task.prompt(query)])


def _demos(task: Task, pool: Sequence[dict], picked: list[int], ok: Callable[[dict], bool],
           rng: random.Random, shuffle_labels: bool) -> list[str]:
    """``prompt + answer`` of each picked pool example (a random answer with ``shuffle_labels``)."""
    out = []
    for i in picked:
        if not shuffle_labels:
            answer = task.answer(pool[i])
        elif task.kind == "classification":
            answer = rng.choice(task.choices())
        else:
            answer = _other_answer(task, pool, i, ok, rng)
        out.append(task.prompt(pool[i]) + answer)
    return out


def fewshot_prompts(
    task: Task,
    queries: Sequence[dict],
    pool: Sequence[dict],
    k: int,
    seed: int,
    shuffle_labels: bool = False,
) -> list[str]:
    """k-shot prompts for all ``queries``; the same ``seed`` gives the same prompts.

    Query i uses its own generator seeded from ``(seed, i)``, so a prompt does not depend on
    the other queries (a prefix of ``queries`` gives a prefix of the prompts).
    """
    _check_k(k)
    pool = pool if isinstance(pool, Sequence) else list(pool)
    return [
        build_fewshot_prompt(
            task, q, pool, k, random.Random(f"taskvec-fewshot:{seed}:{i}"), shuffle_labels
        )
        for i, q in enumerate(queries)
    ]


def shared_fewshot_prompts(
    task: Task,
    queries: Sequence[dict],
    pool: Sequence[dict],
    k: int,
    seed: int,
    shuffle_labels: bool = False,
) -> list[str]:
    """k-shot prompts that all use **one** seeded set of demonstrations (the usual ICL protocol).

    The set is drawn once with a generator seeded from ``seed`` and excludes every query (and
    any pool example with a query's prompt text), so no query sees its own answer. All prompts
    then share the demonstrations as a common prefix, which scoring encodes once
    (:mod:`taskvec.eval.prefix`).
    """
    _check_k(k)
    if k == 0:
        return [task.prompt(q) for q in queries]
    pool = pool if isinstance(pool, Sequence) else list(pool)
    qprompts = {task.prompt(q) for q in queries}
    qkeys = {repr(sorted(q.items())) for q in queries}

    def ok(d: dict) -> bool:
        return task.prompt(d) not in qprompts and repr(sorted(d.items())) not in qkeys

    rng = random.Random(f"taskvec-fewshot-shared:{seed}")
    demos = _demos(task, pool, _pick(pool, k, ok, rng), ok, rng, shuffle_labels)
    head = task.separator.join(demos) + task.separator
    return [head + task.prompt(q) for q in queries]


#: how demonstrations are chosen: a fresh seeded set per query, or one set shared by all
DEMO_MODES: dict[str, Callable[..., list[str]]] = {
    "per-query": fewshot_prompts,
    "shared": shared_fewshot_prompts,
}
