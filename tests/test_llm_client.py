"""The LLM client against a fake OpenAI-compatible server on loopback (real HTTP): answers, JSON repair, retries,
timeouts, Retry-After, fatal errors, bounded concurrency, and an API key that never leaks."""

from __future__ import annotations

import logging
import time

import pytest
from fake_openai import FakeOpenAI, Reply

from genrec.interests.json_repair import extract_json
from genrec.interests.llm import ClientConfig, Completion, Failure, LLMClient, LLMError

SECRET = "sk-test-secret-0123456789"


def client_for(server: FakeOpenAI, **kw) -> LLMClient:
    options = dict(model="fake-model", base_url=server.url, api_key_env="GENREC_TEST_KEY", concurrency=4, timeout=2.0,
                   max_attempts=3, backoff_base=0.01, backoff_max=0.2)
    return LLMClient(ClientConfig(**{**options, **kw}))


def interests(obj) -> list[str]:
    return [e["interest"] for e in obj["interests"]]


@pytest.mark.parametrize("text, expected", [
    ('{"a": 1}', {"a": 1}),  # plain JSON
    ('```json\n{"a": [1, 2]}\n```', {"a": [1, 2]}),  # a fenced block
    ('<think>maybe {"a": 0}</think>Answer: {"a": 1}', {"a": 1}),  # reasoning is dropped, even with JSON inside
    ('reasoning...</think>{"a": 1}', {"a": 1}),  # the opening tag was in the prompt (Qwen3 chat template)
    ('Step 1: {not json}. Final: {"a": {"b": "}"}} thanks', {"a": {"b": "}"}}),  # prose braces; brace in a string
    ('first {"a": 1} then the real one {"a": 2}', {"a": 2}),  # the last complete object is the answer
    ('{"a": [1, 2,], "b": 3,}', {"a": [1, 2], "b": 3}),  # trailing commas
    ("{'a': 'it\\'s', 'b': \"x\"}", {"a": "it's", "b": "x"}),  # single quotes, escaped apostrophe
    ("{'a': True, 'b': None}", {"a": True, "b": None}),  # Python literals
    ('{"a": "say \\"hi\\", ok"}', {"a": 'say "hi", ok'}),  # escaped quotes stay
    ('[1, 2] and then {"a": 1} and [3]', {"a": 1}),  # an object wins over arrays
    ('["x", "y"]', ["x", "y"]),  # an array when there is no object
])
def test_extract_json_repairs_what_is_safe(text, expected):
    assert extract_json(text) == expected


@pytest.mark.parametrize("text, message", [
    ("no json here", "no complete JSON object"),
    ('{"interests": [{"interest": "cut off', "no complete JSON object"),  # hit max_tokens
    ("<think>still thinking {\"a\": 1}", "no complete JSON object"),  # reasoning never closed
    ("{'a': 'kid's toys'}", "JSON"),  # an apostrophe inside single quotes is not guessed at
    ('{"a": 1 "b": 2}', "does not parse"),  # a missing comma is not guessed at either
])
def test_extract_json_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        extract_json(text)


def test_good_answers_bounded_concurrency_usage_and_key(fake, monkeypatch, caplog):
    monkeypatch.setenv("GENREC_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    server = fake(latency=0.05)
    client = client_for(server, concurrency=4)
    prompts = {i: f"Item: SKU-{i} woodworking chisel" for i in range(20)}
    out = client.complete_json(prompts, interests)
    assert all(isinstance(r, Completion) for r in out.values()), out
    assert out[3].value == ["woodworking projects", "chisel projects"] and out[3].attempts == 1
    assert out[3].usage.prompt_tokens == 4 and client.usage.prompt_tokens == 80  # from the response's usage
    assert set(server.counts.values()) == {1}  # every prompt asked once
    assert 2 <= server.max_in_flight <= 4  # concurrent, and never above the bound
    assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    assert SECRET not in caplog.text and SECRET not in repr(client) and SECRET not in repr(client.cfg)


def test_malformed_answers_fail_after_retries_and_others_are_kept(fake):
    def script(prompt, n):
        if "SKU-bad" in prompt:
            return "I think it is for woodworking."  # no JSON at all
        if "SKU-missing" in prompt:
            return '{"interests": [{"interest": "woodworking"}]}'  # no confidence
        return Reply()

    server = fake(script)
    out = client_for(server).complete_json({k: f"SKU-{k} drill" for k in ("bad", "missing", "ok")},
                                           lambda obj: [e["confidence"] for e in obj["interests"]])
    assert isinstance(out["ok"], Completion)
    assert isinstance(out["bad"], Failure) and "no complete JSON object" in out["bad"].reason
    assert out["bad"].text == "I think it is for woodworking." and out["bad"].attempts == 3
    assert isinstance(out["missing"], Failure) and "malformed answer" in out["missing"].reason
    assert server.counts == {"SKU-bad": 3, "SKU-missing": 3, "SKU-ok": 1}  # malformed answers are asked again


def test_slow_answers_time_out_and_fail(fake):
    server = fake(lambda prompt, n: Reply(delay=2.0) if "SKU-slow" in prompt else Reply())
    start = time.perf_counter()
    out = client_for(server, timeout=0.2, max_attempts=2).complete_json(
        {k: f"SKU-{k} saw" for k in ("slow", "fast")}, interests)
    assert isinstance(out["fast"], Completion)
    assert isinstance(out["slow"], Failure) and "timeout" in out["slow"].reason and out["slow"].attempts == 2
    assert time.perf_counter() - start < 1.5  # two 0.2 s timeouts, not the server's 2 s
    assert server.counts["SKU-slow"] == 2


def test_429_retry_after_is_honoured(fake):
    server = fake(lambda prompt, n: Reply(429, headers={"Retry-After": "0.4"}) if n == 1 else Reply())
    start = time.perf_counter()
    out = client_for(server, concurrency=2, backoff_max=5).complete_json({k: f"SKU-{k} saw" for k in ("a", "b")},
                                                                      interests)
    assert all(isinstance(r, Completion) and r.attempts == 2 for r in out.values())
    assert time.perf_counter() - start >= 0.4  # backoff_base is 0.01 s: only the header can explain the wait
    assert server.statuses == {429: 2, 200: 2}


def test_5xx_is_retried_then_recorded_as_failure(fake):
    def script(prompt, n):
        if "SKU-down" in prompt:
            return Reply(500)
        return Reply(503) if n < 3 else Reply()  # two errors, then an answer

    server = fake(script)
    out = client_for(server, max_attempts=3).complete_json({k: f"SKU-{k} saw" for k in ("flaky", "down")}, interests)
    assert isinstance(out["flaky"], Completion) and out["flaky"].attempts == 3
    assert isinstance(out["down"], Failure) and out["down"].reason.startswith("HTTP 500")
    assert server.counts == {"SKU-flaky": 3, "SKU-down": 3}


def test_client_errors_are_not_retried(fake):
    server = fake(lambda prompt, n: Reply(400, content="prompt too long"))
    out = client_for(server).complete_json({"a": "SKU-a"}, interests)
    assert isinstance(out["a"], Failure) and out["a"].reason == 'HTTP 400: {"error": {"message": "prompt too long"}}'
    assert server.counts["SKU-a"] == 1


def test_bad_key_stops_the_whole_call_without_leaking_it(fake, monkeypatch):
    monkeypatch.setenv("GENREC_TEST_KEY", SECRET)
    server = fake(lambda prompt, n: Reply(401))
    with pytest.raises(LLMError, match="refused the API key") as err:
        client_for(server).complete_json({i: f"SKU-{i}" for i in range(10)}, interests)
    assert SECRET not in str(err.value)
    assert sum(server.counts.values()) <= 4  # the workers stop instead of failing every prompt


def test_connection_errors_are_retried_then_fail():
    client = LLMClient(ClientConfig(model="m", base_url="http://127.0.0.1:9/v1", max_attempts=2, backoff_base=0.01))
    out = client.complete_json({"a": "x"}, interests)
    assert isinstance(out["a"], Failure) and "connection error" in out["a"].reason and out["a"].attempts == 2


def test_results_are_reported_as_they_arrive(fake):
    server = fake(latency=0.02)
    seen = []
    client_for(server, concurrency=1).complete_json({i: f"SKU-{i}" for i in range(3)}, interests,
                                                    on_result=lambda key, result: seen.append(key))
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("options, message", [
    ({"model": ""}, "model is empty"),
    ({"base_url": "localhost:8000"}, "http"),
    ({"api_key_env": "sk-live-abc123"}, "NAME of an environment variable"),  # the key pasted where its name goes
    ({"concurrency": 0}, ">= 1"),
    ({"temperature": 3}, "temperature"),
])
def test_client_config_says_what_to_fix(options, message):
    with pytest.raises(ValueError, match=message) as err:
        ClientConfig(**{"model": "m", **options})
    assert "sk-live-abc123" not in str(err.value)
