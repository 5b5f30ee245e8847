"""Token semantics: grouping, the TF-IDF teacher, the LLM teacher (fake HTTP transport) and the file format."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from genrec.artifacts import Run
from genrec.describe import (
    DescribeConfig,
    TeacherError,
    group_tokens,
    parse_answer,
    run_describe,
)

PRODUCTS = {  # cluster (level-0 code) -> titles
    0: ["Nitrile Gloves Disposable Powder Free", "Blue Nitrile Exam Gloves", "Nitrile Work Gloves Box"],
    1: ["Safety Glasses Anti Fog", "Clear Safety Glasses Scratch Resistant", "Tinted Safety Glasses"],
    2: ["Wood Screws Assortment", "Deck Screws Stainless", "Drywall Screws Coarse Thread"],
}


def write_run(run_dir: Path) -> dict[str, list[int]]:
    items, sids = [], {}
    for code, titles in PRODUCTS.items():
        for k, title in enumerate(titles):
            iid = f"{code}{k}"
            items.append({"item_id": iid, "title": title, "description": f"{title} for the workshop, 100 pack.",
                          "brand": "Acme", "categories": "Industrial & Scientific"})
            sids[iid] = [code, k % 2, k]  # <b_0> / <b_1> span all three clusters
    (run_dir / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    (run_dir / "sids.json").write_text(json.dumps(sids))
    return sids


def test_group_tokens_one_token_per_level_and_code():
    groups = group_tokens({"1": [0, 7], "2": [1, 7], "3": [1, 2, 0]})
    assert list(groups) == ["<a_0>", "<a_1>", "<b_2>", "<b_7>", "<c_0>"]
    assert groups["<b_7>"] == {"level": 1, "code": 7, "items": ["1", "2"]}  # same code under different prefixes


def test_tfidf_teacher_finds_the_cluster_words(tmp_path):
    write_run(tmp_path)
    run_describe(tmp_path, DescribeConfig(num_keywords=5))
    sem = Run(tmp_path).token_semantics()
    assert set(sem) == {"<a_0>", "<a_1>", "<a_2>", "<b_0>", "<b_1>", "<c_0>", "<c_1>", "<c_2>"}
    gloves, glasses, screws = sem["<a_0>"], sem["<a_1>"], sem["<a_2>"]
    assert gloves["items"] == ["00", "01", "02"] and gloves["level"] == 0 and gloves["code"] == 0
    assert gloves["keywords"][0] == "gloves" and "nitrile" in gloves["keywords"]
    assert set(glasses["keywords"][:2]) == {"safety", "glasses"} and screws["keywords"][0] == "screws"
    # words in every item ("workshop", "pack") or numbers carry no cluster information
    assert not {"workshop", "pack", "100", "the"} & {kw for e in sem.values() for kw in e["keywords"]}
    assert gloves["description"].startswith('Items such as "') and "sharing: gloves" in gloves["description"]
    assert sem["<b_0>"]["items"] == ["00", "02", "10", "12", "20", "22"]


def test_tfidf_prefers_whole_words_of_the_lm_vocabulary(tmp_path):
    write_run(tmp_path)
    run_describe(tmp_path, DescribeConfig(num_keywords=3, piece_penalty=0.0))
    plain = Run(tmp_path).token_semantics()["<a_0>"]["keywords"]
    run_describe(tmp_path, DescribeConfig(num_keywords=3, piece_penalty=1.0))
    strict = Run(tmp_path).token_semantics()["<a_0>"]["keywords"]
    # "nitrile" is 3 WordPiece pieces (ni ##tri ##le): divided by 3 it falls below words found in one item
    assert plain[:2] == ["gloves", "nitrile"] and strict[0] == "gloves" and "nitrile" not in strict


@pytest.mark.parametrize("answer, expected", [
    ('{"keywords": ["Gloves", "nitrile", "gloves"], "description": " Hand  protection. "}',
     {"keywords": ["gloves", "nitrile"], "description": "Hand protection."}),  # lowercased, de-duplicated, tidied
    ('```json\n{"keywords": ["a"], "description": "b"}\n```', {"keywords": ["a"], "description": "b"}),  # fences
    ('<think>{"x": 1}</think>Sure! {"keywords": ["a"], "description": "b"}',
     {"keywords": ["a"], "description": "b"}),  # reasoning and prose around the JSON
    ('{"keywords": ["a",], "description": "b",}', {"keywords": ["a"], "description": "b"}),  # trailing commas
])
def test_parse_answer_accepts(answer, expected):
    assert parse_answer(answer, 15) == expected


@pytest.mark.parametrize("answer, match", [
    ("I cannot help with that.", "no complete JSON"),  # prose only
    ('{"keywords": ["a" "description": }', "JSON"),  # broken beyond repair
    ('{"keywords": "a, b", "description": "b"}', "list of strings"),  # wrong type
    ('{"keywords": ["a"]}', "description"),  # missing field
    ('{"keywords": [" "], "description": "b"}', "empty"),  # nothing usable
])
def test_parse_answer_rejects(answer, match):
    with pytest.raises(ValueError, match=match):
        parse_answer(answer, 15)


def fake_endpoint(answers, calls: list):
    """An httpx transport that answers chat-completions requests with answers(prompt) -> (status, content)."""
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        prompt = json.loads(request.content)["messages"][0]["content"]
        calls.append(prompt)
        status, content = answers(prompt)
        return httpx.Response(status, json={"choices": [{"message": {"role": "assistant", "content": content}}]})

    return httpx.MockTransport(handle)


def llm_config(**kw) -> DescribeConfig:
    return DescribeConfig(teacher="openai", model="fake", concurrency=1, retry_wait=0.0, **kw)


GOOD = '{"keywords": ["protective gear"], "description": "Things that protect you."}'


def test_llm_teacher_retries_and_caches(tmp_path):
    write_run(tmp_path)
    calls, flaky = [], {"n": 0}

    def answers(prompt):
        flaky["n"] += 1
        if flaky["n"] == 1:
            return 500, ""  # server hiccup
        if flaky["n"] == 2:
            return 200, "Here you go: keywords are gloves and nitrile."  # no JSON
        return 200, GOOD

    run_describe(tmp_path, llm_config(), transport=fake_endpoint(answers, calls))
    sem = Run(tmp_path).token_semantics()
    assert len(calls) == 8 + 2 and sem["<a_0>"]["keywords"] == ["protective gear"]
    assert "Nitrile Gloves Disposable Powder Free" in calls[0] and "<a_0>" in calls[0]
    calls.clear()
    run_describe(tmp_path, llm_config(), transport=fake_endpoint(answers, calls))
    assert calls == []  # every answer came from the cache


def test_llm_teacher_gives_up_naming_the_token_and_keeps_the_rest(tmp_path):
    write_run(tmp_path)
    calls = []

    def answers(prompt):
        return 200, "not json" if "Safety Glasses Anti Fog" in prompt and "<a_1>" in prompt else GOOD

    with pytest.raises(TeacherError, match=r"token <a_1> .*3 attempts.*not json"):
        run_describe(tmp_path, llm_config(), transport=fake_endpoint(answers, calls))
    assert not (tmp_path / "token_semantics.json").exists()
    cached = (tmp_path / "token_semantics.cache.jsonl").read_text().splitlines()
    assert len(cached) == 7 and len(calls) == 7 + 3
    calls.clear()
    with pytest.raises(TeacherError):  # a resumed run only asks about the failed token
        run_describe(tmp_path, llm_config(), transport=fake_endpoint(answers, calls))
    assert len(calls) == 3


@pytest.mark.parametrize("kw, match", [
    ({"teacher": "gpt"}, "teacher"),  # unknown teacher
    ({"teacher": "openai"}, "describe.model"),  # the endpoint needs a model name
    ({"num_keywords": 0}, "num_keywords"),  # nothing to describe with
    ({"max_df": 0.0}, "max_df"),  # would drop every term
    ({"piece_penalty": -1.0}, "piece_penalty"),  # would favour fragments
    ({"teacher": "openai", "model": "m", "max_attempts": 0}, "max_attempts"),  # never asks
    ({"prompt_file": "/nonexistent/prompt.txt"}, "prompt_file"),  # typo in the path
])
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        DescribeConfig(**kw)


def test_load_token_semantics_rejects_malformed(tmp_path):
    (tmp_path / "token_semantics.json").write_text(json.dumps({"<a_0>": {"level": 0, "keywords": []}}))
    with pytest.raises(ValueError, match="<a_0>.*describe stage"):
        Run(tmp_path).token_semantics()
