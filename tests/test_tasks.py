"""Tests of taskvec.tasks: registry, packaged data, templates, few-shot prompts, user tasks."""

from __future__ import annotations

import gzip
import json
import random
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskvec.errors import TaskFileError, UnknownNameError, UserInputError
from taskvec.tasks import (
    Task,
    build_fewshot_prompt,
    fewshot_prompts,
    get_task,
    list_tasks,
    load_task_file,
    register_task,
)
from taskvec.tasks.icl import ICL_FILES
from taskvec.tasks.task import template_fields

CLASSIFICATION = ["ag_news", "cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "trec"]
OWN_WORDS = ["mnli-own-words", "qnli-own-words", "qqp-own-words", "rte-own-words", "mrpc-own-words",
             "cola-own-words"]
DATA = resources.files("taskvec.tasks").joinpath("data")
ALL_NAMES = [t.name for t in list_tasks()]


def _manifest() -> dict:
    return json.loads(DATA.joinpath("manifest.json").read_text(encoding="utf-8"))


# -- registry ---------------------------------------------------------------------------------
def test_registry_lists_all_builtin_tasks():
    names = set(ALL_NAMES)
    assert set(CLASSIFICATION) <= names
    icl_names = {("icl-ag_news" if f == "ag_news" else f) for fs in ICL_FILES.values() for f in fs}
    assert icl_names <= names
    assert set(OWN_WORDS) <= names
    assert len(names) == len(ALL_NAMES) == len(CLASSIFICATION) + len(OWN_WORDS) + 51
    assert get_task("ag_news").kind == "classification"
    assert get_task("icl-ag_news").kind == "generation"
    for name in ("antonym", "capitalize", "country-capital", "english-french", "present-past"):
        assert get_task(name).kind == "generation"
    assert get_task("sst2") is get_task("sst2")


def test_unknown_task_suggests_close_name():
    with pytest.raises(UnknownNameError, match=r'Did you mean "sst2"\?.*Known tasks: .*antonym'):
        get_task("sst-2")
    with pytest.raises(UnknownNameError, match="Did you mean"):
        get_task("antonyms")


def test_unknown_split_lists_splits():
    with pytest.raises(UnknownNameError, match=r"Known splits: train, validation\.") as e:
        get_task("sst2").load("dev")
    assert "\n" not in str(e.value)


def test_register_task():
    task = Task(name="test-reg-task", kind="classification", template="{text} ->",
                label_words={"a": " A", "b": " B"}, splits=("train",), eval_split="train",
                loader=lambda split: [{"text": "x", "label": "a"}])  # fmt: skip
    assert register_task(task) is task
    assert get_task("test-reg-task") is task
    assert register_task(task) is task  # same object again: no-op
    clone = Task(name="test-reg-task", kind="generation", template="{input}", splits=("train",),
                 eval_split="train")  # fmt: skip
    with pytest.raises(UserInputError, match="already registered"):
        register_task(clone)
    assert task in list_tasks()


# -- packaged data ------------------------------------------------------------------------------
def test_packaged_files_match_manifest():
    manifest = _manifest()
    present = {f"{d.name}/{f.name}" for d in DATA.iterdir() if d.is_dir() and d.name != "icl"
               for f in d.iterdir()}  # fmt: skip
    for folder, files in ICL_FILES.items():
        present |= {f"icl/{folder}/{f.name}" for f in DATA.joinpath("icl", folder).iterdir()}
        assert {f.name for f in DATA.joinpath("icl", folder).iterdir()} == {
            f"{name}.json.gz" for name in files
        }
    assert present == set(manifest)
    total = sum(m["gz_bytes"] for m in manifest.values())
    assert total < 15_000_000
    head = DATA.joinpath("rte", "validation.jsonl.gz").read_bytes()[:10]
    assert head[4:8] == b"\0\0\0\0"  # gzip mtime 0: deterministic build


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_task_loads_and_formats(name):
    task = get_task(name)
    assert task.eval_split in task.splits and task.train_split in task.splits
    examples = task.load(limit=5)
    assert 0 < len(examples) <= 5
    for ex in examples:
        prompt, answer = task.prompt(ex), task.answer(ex)
        assert prompt and not prompt.endswith(" ")
        assert answer.startswith(" ") and answer.strip()
        assert "{" + task.fields[0] + "}" not in prompt
        if task.kind == "classification":
            assert task.choices()[task.label_index(ex)] == answer
        else:
            assert set(ex) >= {"input", "output"} and task.metric == "first_token"
    assert task.description and task.source and task.separator == "\n\n"


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_label_words_distinct_and_not_prefixes(name):
    task = get_task(name)
    words = task.choices()
    assert len(set(words)) == len(words) == len(task.labels()) >= 2
    for a in words:
        assert a.startswith(" ")
        assert not any(b != a and b.startswith(a) for b in words)
    assert task.metric == "accuracy"


def test_split_sizes_match_manifest_and_labels_known():
    manifest = _manifest()
    for name in CLASSIFICATION:
        task = get_task(name)
        for split in task.splits:
            if name == "sst2" and split == "train":
                continue  # 67k rows: covered by the manifest entry alone
            rows = task.load(split)
            assert len(rows) == manifest[f"{name}/{split}.jsonl.gz"]["examples"]
            assert {r["label"] for r in rows} <= set(task.labels())


def test_defaults_and_derived_splits():
    assert get_task("mnli").eval_split == "validation_matched_sample"
    assert "validation_from_train" in get_task("mnli").splits
    assert get_task("qnli").eval_split == get_task("qqp").eval_split == "validation_from_train"
    trec = get_task("trec")
    train = {r["text"].lower() for r in trec.load("train")}
    val = trec.load("validation")
    assert len(val) == 500 and not any(r["text"].lower() in train for r in val)
    ag = get_task("ag_news")
    val, test = ag.load("validation"), ag.load("test")
    assert len(val) == 2000 and len(test) == 5600
    assert not {r["text"] for r in val} & {r["text"] for r in test}
    assert {lab: sum(r["label"] == lab for r in val) for lab in ag.labels()} == dict.fromkeys(
        ag.labels(), 500
    )


def test_icl_splits_disjoint_and_deterministic():
    for name in ("country-capital", "national_parks", "conll2003_location"):
        task = get_task(name)
        parts = {s: task.load(s) for s in task.splits}
        assert len(parts["test"]) >= 20 and len(parts["validation"]) >= 20
        inputs = {s: {r["input"] for r in rows} for s, rows in parts.items()}
        assert not inputs["train"] & inputs["test"]
        assert not inputs["train"] & inputs["validation"]
        assert not inputs["validation"] & inputs["test"]
        assert task.load("test") == parts["test"]


def test_load_limit_and_copies():
    task = get_task("rte")
    first = task.load(limit=3)
    assert first == task.load()[:3]
    first[0]["label"] = "changed"
    assert task.load(limit=1)[0]["label"] != "changed"
    with pytest.raises(UserInputError):
        task.load(limit=-1)


def test_prompt_missing_field_is_user_error():
    with pytest.raises(UserInputError, match="no field 'text'"):
        get_task("sst2").prompt({"sentence": "x", "label": "positive"})
    with pytest.raises(UserInputError, match="unknown label"):
        get_task("sst2").label_index({"text": "x", "label": "neutral"})


def test_template_fields():
    assert template_fields("A {a} and {b} {{c}} {a}") == ["a", "b"]
    for bad in ("{", "{0}", "{}", "{a.b}", "{a[0]}", "{a!r}", "{a:>3}"):
        with pytest.raises(UserInputError):
            template_fields(bad)


def test_task_validation():
    with pytest.raises(UserInputError, match="prefix"):
        Task(name="t", kind="classification", template="{text}",
             label_words={"a": " yes", "b": " yes please"})  # fmt: skip
    with pytest.raises(UserInputError, match="kind"):
        Task(name="t", kind="regression", template="{text}")
    with pytest.raises(UserInputError, match="eval_split"):
        Task(name="t", kind="generation", template="{input}", splits=("train",))


# -- few-shot prompts ---------------------------------------------------------------------------
def _sst2_pool(query: dict) -> list[dict]:
    pool = get_task("sst2").load("validation", limit=40)
    return [query, dict(query), dict(query)] + pool[:10] + [dict(query)] + pool[10:]


def test_fewshot_has_k_demos_and_ends_with_query():
    task = get_task("sst2")
    query = task.load("validation")[100]
    prompt = build_fewshot_prompt(task, query, _sst2_pool(query), 5, random.Random(0))
    parts = prompt.split("\n\n")
    assert len(parts) == 6 and parts[-1] == task.prompt(query)
    for demo in parts[:-1]:
        assert demo.rsplit("\n", 1)[1] in ("Sentiment: negative", "Sentiment: positive")
    assert build_fewshot_prompt(task, query, [], 0, random.Random(0)) == task.prompt(query)


def test_fewshot_deterministic_by_seed():
    task = get_task("antonym")
    queries, pool = task.load("test", limit=8), task.load("train")
    a = fewshot_prompts(task, queries, pool, 4, seed=1)
    assert a == fewshot_prompts(task, queries, pool, 4, seed=1)
    assert a != fewshot_prompts(task, queries, pool, 4, seed=2)
    assert a[:3] == fewshot_prompts(task, queries[:3], pool, 4, seed=1)


def test_fewshot_never_uses_query():
    task = get_task("sst2")
    query = task.load("validation")[100]
    qtext = task.prompt(query)
    pool = _sst2_pool(query)
    for seed in range(30):
        prompt = build_fewshot_prompt(task, query, pool, 40, random.Random(seed))
        demos = prompt.split("\n\n")[:-1]
        assert len(demos) == 40 and not any(d.startswith(qtext) for d in demos)
    # Only the query and copies of it: nothing usable.
    with pytest.raises(UserInputError, match="only 0 usable"):
        build_fewshot_prompt(task, query, [query, dict(query)], 1, random.Random(0))
    with pytest.raises(UserInputError, match="lower k"):
        fewshot_prompts(task, [query], pool, 41, seed=0)
    with pytest.raises(UserInputError, match="k"):
        fewshot_prompts(task, [query], pool, -1, seed=0)


def test_fewshot_excludes_same_prompt_in_large_generation_pool():
    task = get_task("antonym")
    pool = task.load("train")
    query = {"input": pool[7]["input"], "output": "something else"}
    big = pool + [dict(pool[7]) for _ in range(50)]
    for seed in range(20):
        prompt = build_fewshot_prompt(task, query, big, 10, random.Random(seed))
        demos = prompt.split("\n\n")[:-1]
        assert len(demos) == 10 and not any(d.startswith(task.prompt(query)) for d in demos)
        assert prompt.count(f"Q: {query['input']}\n") == 1


@settings(max_examples=40, deadline=None)
@given(n_copies=st.integers(0, 6), n_other=st.integers(3, 12), seed=st.integers(0, 10**6))
def test_fewshot_query_never_a_demo_property(n_copies, n_other, seed):
    task = get_task("country-capital")
    rows = task.load("train")
    query = rows[0]
    pool = [query] + [dict(query) for _ in range(n_copies)] + rows[1 : 1 + n_other]
    random.Random(seed).shuffle(pool)
    prompt = build_fewshot_prompt(task, query, pool, 3, random.Random(seed))
    assert prompt.count(task.prompt(query)) == 1 and prompt.endswith(task.prompt(query))


def _answers(prompt: str, sep: str) -> list[str]:
    return [d.rsplit(":", 1)[1] for d in prompt.split(sep)[:-1]]


def test_shuffled_labels_change_answers():
    task = get_task("sst2")
    queries = task.load("validation", limit=20)
    pool = task.load("validation")[20:]
    plain = fewshot_prompts(task, queries, pool, 8, seed=3)
    shuffled = fewshot_prompts(task, queries, pool, 8, seed=3, shuffle_labels=True)
    assert shuffled == fewshot_prompts(task, queries, pool, 8, seed=3, shuffle_labels=True)
    changed = 0
    for p, s in zip(plain, shuffled):
        assert [d.rsplit("\n", 1)[0] for d in p.split("\n\n")] == [
            d.rsplit("\n", 1)[0] for d in s.split("\n\n")
        ]  # same demonstration inputs, same query
        a, b = _answers(p, "\n\n"), _answers(s, "\n\n")
        assert set(b) <= set(task.choices())
        changed += sum(x != y for x, y in zip(a, b))
    assert changed > 20

    gen = get_task("country-capital")
    pool = gen.load("train")
    outputs = {" " + r["output"] for r in pool}
    p = fewshot_prompts(gen, gen.load("test", limit=10), pool, 5, seed=0)
    s = fewshot_prompts(gen, gen.load("test", limit=10), pool, 5, seed=0, shuffle_labels=True)
    pairs = [
        (x, y) for pp, ss in zip(p, s) for x, y in zip(_answers(pp, "\n\n"), _answers(ss, "\n\n"))
    ]
    assert all(y in outputs for _, y in pairs)
    assert sum(x != y for x, y in pairs) > len(pairs) // 2


# -- user task files ----------------------------------------------------------------------------
YAML = """\
name: my-sentiment
template: "Text: {text}\\nLabel:"
label_words: {bad: " bad", good: " good"}
data: {train: train.jsonl, validation: dev.jsonl}
"""
LINES = ['{"text": "great", "label": "good"}', '{"text": "awful", "label": "bad"}']


def _write(tmp_path: Path, yaml_text: str = YAML, train: list[str] = LINES,
           dev: list[str] = LINES) -> Path:  # fmt: skip
    (tmp_path / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    (tmp_path / "dev.jsonl").write_text("\n".join(dev) + "\n", encoding="utf-8")
    path = tmp_path / "task.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    return path


def test_user_task_happy_path(tmp_path):
    path = _write(tmp_path)
    task = load_task_file(path)
    assert (task.name, task.kind, task.eval_split, task.train_split) == (
        "my-sentiment", "classification", "validation", "train"
    )  # fmt: skip
    assert task.labels() == ["bad", "good"] and task.choices() == [" bad", " good"]
    ex = task.load()[0]
    assert task.prompt(ex) + task.answer(ex) == "Text: great\nLabel: good"
    assert get_task(str(path)).name == "my-sentiment"
    assert get_task(path).load("train") == task.load("train")
    prompts = fewshot_prompts(task, task.load(), task.load("train"), 1, seed=0)
    assert prompts[0] == "Text: awful\nLabel: bad\n\nText: great\nLabel:"


def test_user_generation_task(tmp_path):
    yaml_text = (
        "name: gen\nkind: generation\ntemplate: 'In: {input}\\nOut:'\ndata: {test: d.json}\n"
    )
    (tmp_path / "d.json").write_text(json.dumps([{"input": "a", "output": "b"}]), encoding="utf-8")
    (tmp_path / "t.yml").write_text(yaml_text, encoding="utf-8")
    task = get_task(str(tmp_path / "t.yml"))
    assert task.kind == "generation" and task.eval_split == task.train_split == "test"
    assert task.answer(task.load()[0]) == " b"


BAD_CASES = {
    "bad_json_line": (YAML, LINES + ["{not json"], r"train\.jsonl:3: invalid JSON"),
    "not_an_object": (YAML, LINES + ["[1, 2]"], r"train\.jsonl:3: expected a JSON object"),
    "missing_field": (YAML, ['{"label": "good"}'], r"train\.jsonl:1: missing field 'text'"),
    "unknown_label": (YAML, LINES + ['{"text": "meh", "label": "neutral"}'],
                      r"train\.jsonl:3: unknown label 'neutral'.*bad, good"),
    "missing_file": (YAML.replace("dev.jsonl", "nope.jsonl"), LINES, r"nope\.jsonl: data file not found"),
    "template_field_missing": (YAML.replace("{text}", "{sentence}"), LINES,
                               r"train\.jsonl:1: missing field 'sentence'"),
    "fields_disagree": (YAML + "fields: [sentence]\n", LINES, r"template uses \{text\}.*'fields'"),
    "no_template": (YAML.replace('template: "Text: {text}\\nLabel:"\n', ""), LINES,
                    r"missing required key 'template'"),
    "bad_template": (YAML.replace("{text}", "{text"), LINES, r"bad 'template'.*unmatched"),
    "prefix_words": (YAML.replace('" bad"', '" goo"'), LINES, r"prefix"),
    "unknown_key": (YAML + "lable_words: {}\n", LINES, r"unknown key 'lable_words'.*Did you mean"),
    "bad_yaml": (YAML + "data: [unclosed\n", LINES, r"task\.yaml:\d+: invalid YAML"),
    "bad_eval_split": (YAML + "eval_split: dev\n", LINES, r"eval_split 'dev' is not under 'data'"),
    "bad_kind": (YAML + "kind: regression\n", LINES, r"unknown kind 'regression'"),
    "no_data": (YAML.replace("data: {train: train.jsonl, validation: dev.jsonl}\n", ""), LINES,
                r"missing or empty 'data'"),
    "empty_file": (YAML, [""], r"train\.jsonl: no examples"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_user_task_errors_are_one_line(tmp_path, case):
    yaml_text, train, pattern = BAD_CASES[case]
    path = _write(tmp_path, yaml_text, train)
    with pytest.raises(TaskFileError, match=pattern) as e:
        load_task_file(path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and ";" in msg


def test_user_task_missing_yaml(tmp_path):
    with pytest.raises(TaskFileError, match="task file not found"):
        get_task(str(tmp_path / "absent.yaml"))


def test_user_task_gz_data(tmp_path):
    (tmp_path / "train.jsonl.gz").write_bytes(gzip.compress("\n".join(LINES).encode()))
    path = _write(tmp_path, YAML.replace("train.jsonl,", "train.jsonl.gz,"))
    assert len(load_task_file(path).load("train")) == 2



@pytest.mark.parametrize("name", OWN_WORDS)
def test_own_words_variant_has_the_base_data_and_distinct_words(name):
    task, base = get_task(name), get_task(name.removesuffix("-own-words"))
    assert task.splits == base.splits and task.eval_split == base.eval_split
    assert task.labels() == base.labels()
    for split in task.splits:
        assert task.load(split, limit=50) == base.load(split, limit=50)
    words = task.choices()
    assert len(set(words)) == len(words) and not any(b != a and b.startswith(a) for a in words for b in words)
    assert not set(words) & {" yes", " no", " maybe"}


def test_own_words_collection_shares_no_label_word_across_tasks():
    """The nine-task collection answers with 25 words, 6 of them from 6 tasks sharing " yes"/" no";
    the own-words variant has no word used by two tasks."""
    from collections import Counter

    base = Counter(w for n in CLASSIFICATION for w in set(get_task(n).choices()))
    assert base[" yes"] == 6 and base[" no"] == 6
    own = [n if n in ("sst2", "trec", "ag_news") else f"{n}-own-words" for n in CLASSIFICATION]
    counts = Counter(w for n in own for w in set(get_task(n).choices()))
    assert max(counts.values()) == 1


@pytest.mark.slow
def test_own_words_are_single_tokens_of_the_embedded_model(embedded):
    _, tok = embedded
    for name in OWN_WORDS:
        for w in get_task(name).choices():
            assert len(tok.encode(w, add_special_tokens=False)) == 1, (name, w)
