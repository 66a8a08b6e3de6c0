"""Built-in classification tasks (GLUE-style, TREC, AG News) backed by packaged JSONL.gz data.

Templates are zero-shot prompts for a small instruct LM; label words are single tokens for
the SmolLM2 tokenizer, distinct, and none is a prefix of another. Labels are listed in the
GLUE label-id order (or the source's class order for TREC and AG News).
"""

from __future__ import annotations

from functools import partial

from taskvec.tasks.task import Task, parse_jsonl, read_package_bytes

_ANSWER = "\nAnswer:"

# name -> keyword arguments of Task (loader and kind added below).
CLASSIFICATION_SPECS: dict[str, dict] = {
    "sst2": dict(
        template="Review: {text}\nSentiment:",
        label_words={"negative": " negative", "positive": " positive"},
        splits=("train", "validation"),
        eval_split="validation",
        source="GLUE SST-2 (awake020/pytorch_Bert_sst2 @ce2ab17: SST-2/train.tsv, dev.tsv); "
        "SST/GLUE public research data",
        description="Binary movie-review sentiment (GLUE SST-2; lower-cased, PTB-tokenized).",
    ),
    "mnli": dict(
        template="Premise: {premise}\nHypothesis: {hypothesis}\n"
        "Does the premise imply the hypothesis? Yes, no, or maybe?" + _ANSWER,
        label_words={"entailment": " yes", "neutral": " maybe", "contradiction": " no"},
        splits=("train", "validation_from_train", "validation_matched_sample"),
        eval_split="validation_matched_sample",
        source="MultiNLI: 9k/1k sample of the official train split "
        "(ZhengxiangShi/PowerfulPromptFT @b4ecdea); 1k dev-matched sample "
        "(jind11/TextFooler @6a56cb1, PTB-tokenized); MultiNLI public research data",
        description="Three-way natural language inference (MultiNLI subsets).",
    ),
    "qnli": dict(
        template="Question: {premise}\nSentence: {hypothesis}\n"
        "Does the sentence answer the question? Yes or no?" + _ANSWER,
        label_words={"entailment": " yes", "not_entailment": " no"},
        splits=("train", "validation_from_train"),
        eval_split="validation_from_train",
        source="GLUE QNLI: 9k/1k samples of the official train split "
        "(ZhengxiangShi/PowerfulPromptFT @b4ecdea); from SQuAD v1.1, CC BY-SA 4.0",
        description="Does the sentence contain the answer to the question? (QNLI subset)",
    ),
    "qqp": dict(
        template="Question 1: {premise}\nQuestion 2: {hypothesis}\n"
        "Do both questions ask the same thing? Yes or no?" + _ANSWER,
        label_words={"not_duplicate": " no", "duplicate": " yes"},
        splits=("train", "validation_from_train"),
        eval_split="validation_from_train",
        source="GLUE QQP: 9k/1k samples of the official train split "
        "(ZhengxiangShi/PowerfulPromptFT @b4ecdea); Quora non-commercial research terms",
        description="Are the two Quora questions duplicates? (QQP subset)",
    ),
    "rte": dict(
        template="Premise: {premise}\nHypothesis: {hypothesis}\n"
        "Does the premise imply the hypothesis? Yes or no?" + _ANSWER,
        label_words={"entailment": " yes", "not_entailment": " no"},
        splits=("train", "validation"),
        eval_split="validation",
        source="RTE (SuperGLUE/GLUE) train and validation "
        "(tonyzhaozh/few-shot-learning @e04d864); PASCAL RTE public research data",
        description="Two-way textual entailment (RTE).",
    ),
    "mrpc": dict(
        template="Sentence 1: {premise}\nSentence 2: {hypothesis}\n"
        "Do both sentences mean the same thing? Yes or no?" + _ANSWER,
        label_words={"not_equivalent": " no", "equivalent": " yes"},
        splits=("train", "validation"),
        eval_split="validation",
        source="MRPC original MSRP text (a389965626/Sick- @1c9d228), GLUE train/dev split "
        "rebuilt by pair ids; Microsoft Research terms",
        description="Are the two sentences paraphrases? (MRPC, untokenized MSRP text)",
    ),
    "cola": dict(
        template="Sentence: {text}\nIs this sentence grammatically correct? Yes or no?" + _ANSWER,
        label_words={"unacceptable": " no", "acceptable": " yes"},
        splits=("train", "validation"),
        eval_split="validation",
        source="CoLA in-domain train and dev (nyu-mll/CoLA-baselines @dd095d3); "
        "CoLA public release",
        description="Is the sentence grammatically acceptable? (CoLA)",
    ),
    "trec": dict(
        template="Question: {text}\nAnswer type:",
        label_words={
            "abbreviation": " abbreviation",
            "description": " description",
            "entity": " thing",
            "human": " person",
            "location": " place",
            "numeric": " number",
        },
        splits=("train", "validation"),
        eval_split="validation",
        source="TREC coarse question classes, official train (harvardnlp/sent-conv-torch "
        "@d61ded0: data/raw/TREC.train); validation carved out of train by taskvec; "
        "Li & Roth 2002, public research data",
        description="Six-way question type classification (TREC coarse).",
    ),
    "ag_news": dict(
        template="Article: {text}\nTopic:",
        label_words={
            "world": " world",
            "sports": " sports",
            "business": " business",
            "sci/tech": " technology",
        },
        splits=("train", "validation", "test"),
        eval_split="validation",
        source="AG News: 1k class-balanced sample of the official train split "
        "(ZhengxiangShi/PowerfulPromptFT @b4ecdea); official test set "
        "(tonyzhaozh/few-shot-learning @e04d864) split by taskvec into validation/test; "
        "AG's corpus, non-commercial research terms",
        description="Four-way news topic classification (AG News).",
    ),
}


#: The six yes/no tasks with answer words of their own (``<task>-own-words``): same data, a
#: question that names the two (or three) answers, and label words no other built-in task uses
#: (single SmolLM2 tokens). Merging tasks that all answer " yes"/" no" mixes their label words;
#: these variants measure that effect (docs/merging.md, "Label words").
OWN_WORDS_SPECS: dict[str, dict] = {
    "mnli": dict(
        template="Premise: {premise}\nHypothesis: {hypothesis}\n"
        "Is the hypothesis implied by the premise, neutral, or a contradiction?" + _ANSWER,
        label_words={"entailment": " implied", "neutral": " neutral", "contradiction": " contradiction"},
    ),
    "qnli": dict(
        template="Question: {premise}\nSentence: {hypothesis}\n"
        "Is the question answered or unanswered by the sentence?" + _ANSWER,
        label_words={"entailment": " answered", "not_entailment": " unanswered"},
    ),
    "qqp": dict(
        template="Question 1: {premise}\nQuestion 2: {hypothesis}\n"
        "Are the two questions duplicate or distinct?" + _ANSWER,
        label_words={"not_duplicate": " distinct", "duplicate": " duplicate"},
    ),
    "rte": dict(
        template="Premise: {premise}\nHypothesis: {hypothesis}\n"
        "Given the premise, is the hypothesis true or false?" + _ANSWER,
        label_words={"entailment": " true", "not_entailment": " false"},
    ),
    "mrpc": dict(
        template="Sentence 1: {premise}\nSentence 2: {hypothesis}\n"
        "Are the two sentences equivalent or different in meaning?" + _ANSWER,
        label_words={"not_equivalent": " different", "equivalent": " equivalent"},
    ),
    "cola": dict(
        template="Sentence: {text}\nIs this sentence grammatically correct or incorrect?" + _ANSWER,
        label_words={"unacceptable": " incorrect", "acceptable": " correct"},
    ),
}
OWN_WORDS_SUFFIX = "-own-words"


def load_packaged_split(task_name: str, split: str) -> list[dict]:
    """Read ``data/<task>/<split>.jsonl.gz`` from the package."""
    where = f"taskvec/tasks/data/{task_name}/{split}.jsonl.gz"
    return parse_jsonl(read_package_bytes(task_name, f"{split}.jsonl.gz"), where)


def _packaged_task(name: str, data: str, spec: dict) -> Task:
    """A classification ``Task`` called ``name`` reading the packaged data of task ``data``."""
    return Task(name=name, kind="classification", metric="accuracy",
                loader=partial(load_packaged_split, data), **spec)


def _own_words_spec(name: str) -> dict:
    """The spec of ``<name>-own-words``: the built-in spec with its own answer words."""
    base, own = CLASSIFICATION_SPECS[name], OWN_WORDS_SPECS[name]
    words = ", ".join(w.strip() for w in own["label_words"].values())
    return base | own | {"description": base["description"].rstrip(".") + f"; answer words of its own ({words})."}


def classification_tasks() -> list[Task]:
    """Fresh ``Task`` objects for all built-in classification tasks (no file reads)."""
    return [_packaged_task(name, name, spec) for name, spec in CLASSIFICATION_SPECS.items()] + [
        _packaged_task(name + OWN_WORDS_SUFFIX, name, _own_words_spec(name)) for name in OWN_WORDS_SPECS
    ]
