"""`genrec serve`: the API answers good requests, refuses bad ones with a 4xx that says why and keeps serving,
micro-batches without changing any answer, guards /v1 with an API key, sheds load with 503 + Retry-After, never
shows a traceback, and shuts down without dropping in-flight requests."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import torch
from fake_interests import tiny_interests
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from genrec.decoding.beam import DecodeConfig, Recommendation
from genrec.recommender import Recommender
from genrec.serving.app import create_app
from genrec.serving.batcher import MicroBatcher, QueueFull, Unavailable
from genrec.serving.config import ServeConfig, load_api_key
from genrec.serving.server import build_app, make_parser, serve_in_thread
from genrec.serving.vllm_backend import VLLMRecommender, constrained_beam_search, max_fanout
from genrec.sid import sid_tokens

SIDS = {f"i{n}": [n % 4, (n // 4) % 5, n // 20] for n in range(40)}
TITLES = {**{iid: f"Item {iid}" for iid in SIDS}, "i5": "Shared title", "i6": "Shared title"}
WORDS = ["[UNK]", "[PAD]", "[EOS]", "User", "history:", "Next", "item:"]
BEAM = 8
DECODE = DecodeConfig(beam=BEAM, batch_size=8)


def tiny_model_and_tokenizer(sids=SIDS, *, hidden: int = 32, layers: int = 1, seed: int = 0):
    """A random Qwen2 with a word-level tokenizer holding the SID tokens (the pattern of test_evaluate)."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    tokenizer.add_tokens(sorted({t for codes in sids.values() for t in sid_tokens(codes)}) + [",", "."])
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=2 * hidden,
                         eos_token_id=2, pad_token_id=1)
    return Qwen2ForCausalLM(config).eval(), tokenizer


def tiny_recommender() -> Recommender:
    model, tokenizer = tiny_model_and_tokenizer()
    return Recommender(model, tokenizer, SIDS, bf16=False, titles=TITLES, interests=tiny_interests(SIDS))


class FakeRecommender:
    """Answers instantly with two items; `hold` makes calls wait for `release`, `fail` makes them raise."""

    sid_strings = {"a": "<a_0>", "b": "<a_1>"}
    titles = {"a": "A", "b": "B"}

    def __init__(self):
        self.hold, self.fail, self.release, self.calls = False, False, threading.Event(), []

    def recommend(self, histories, decode=None, *, k=None):
        self.calls.append(len(histories))
        if self.hold:
            self.release.wait(20)
        if self.fail:
            raise RuntimeError("secret internal detail")
        return [Recommendation(["a", "b"], [-0.5, -1.5]) for _ in histories]


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.01)


def ready_client(app) -> TestClient:
    client = TestClient(app).__enter__()
    wait_until(lambda: client.get("/readyz").status_code == 200)
    return client


@pytest.fixture(scope="module")
def recommender():
    return tiny_recommender()


@pytest.fixture(scope="module")
def client(recommender):
    client = ready_client(create_app(recommender, ServeConfig(max_history=50, max_body_bytes=4096), DECODE))
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def live(recommender):
    """A real uvicorn server on a free loopback port, recording the size of every model call."""
    sizes = []

    class Recording:
        sid_strings, titles, interests = recommender.sid_strings, recommender.titles, recommender.interests

        def recommend(self, histories, decode=None, *, k=None):
            sizes.append(len(histories))
            return recommender.recommend(histories, decode, k=k)

    with serve_in_thread(create_app(Recording(), ServeConfig(max_wait_ms=30), DECODE)) as server:
        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200)
        server.batch_sizes = sizes
        yield server


# ----------------------------------------------------------------------------- answers


def test_recommend_returns_top_k_real_items_by_id_or_title(client):
    r = client.post("/v1/recommend", json={"history": ["i1", "Item i2"], "k": 5}, headers={"X-Request-ID": "abc-1"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "abc-1"
    body = r.json()
    assert body["history"] == ["i1", "i2"] and body["k"] == 5 and body["returned"] == 5 and body["note"] is None
    ids = [it["item_id"] for it in body["items"]]
    assert len(set(ids)) == 5 and set(ids) <= set(SIDS)
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    first = body["items"][0]
    assert first["title"] == TITLES[first["item_id"]] and first["sid"] == "".join(sid_tokens(SIDS[first["item_id"]]))


def test_exclude_history_drops_history_items_and_says_how_many_came_back(client):
    plain = client.post("/v1/recommend", json={"history": ["i1"], "k": BEAM}).json()
    history = [it["item_id"] for it in plain["items"][:3]]
    body = client.post("/v1/recommend", json={"history": history, "k": BEAM, "exclude_history": True}).json()
    assert not set(history) & {it["item_id"] for it in body["items"]}
    if body["returned"] < BEAM:
        assert body["note"] and "in the history" in body["note"]


def test_batch_answers_equal_single_answers_and_items_endpoint(client):
    queries = [{"history": ["i1"], "k": 3}, {"history": ["i2", "i9"], "k": 5, "exclude_history": True}]
    batch = client.post("/v1/recommend/batch", json={"requests": queries}).json()["results"]
    assert batch == [client.post("/v1/recommend", json=q).json() for q in queries]
    assert client.get("/v1/items/i3").json() == {"item_id": "i3", "title": "Item i3", "sid": "<a_3><b_0><c_0>"}


BAD_REQUESTS = [
    # (body or raw bytes, status, words the message must hold)
    ({"history": ["i1", "nope", "nada"]}, 400, ["unknown", "nope", "nada"]),  # unknown ids are listed
    ({"history": ["Shared title"]}, 400, ["ambiguous", "i5", "i6"]),  # a title two items share
    ({"history": []}, 422, ["history", "at least 1"]),  # empty history
    ({"history": ["i1"], "k": 0}, 422, ["k", "greater than or equal to 1"]),  # k below 1
    ({"history": ["i1"], "k": BEAM + 1}, 422, [f"k={BEAM + 1}", f"[1, {BEAM}]"]),  # k above the beam
    ({"history": ["i1"] * 51}, 413, ["51 entries", "at most 50"]),  # history over the limit
    ({"history": "i1"}, 422, ["history", "valid list"]),  # wrong type
    ({"history": [1, 2]}, 422, ["history.0", "valid string"]),  # ids must be strings
    ({"history": ["i1"], "k": "5"}, 422, ["k", "valid integer"]),  # no silent coercion
    ({"history": ["i1"], "user": "u1"}, 422, ["user", "unknown field"]),  # extra="forbid"
    ({"history": ["i1"], "explain": "yes"}, 422, ["explain", "valid boolean"]),  # a flag is a JSON boolean
    ({"k": 3}, 422, ["history", "required"]),  # missing field
    (b"{not json", 422, ["not valid JSON"]),  # broken JSON
    (b"[1, 2, 3]", 422, ["expected a JSON object"]),  # JSON but not an object
    (b'{"history": ["' + b"x" * 5000 + b'"]}', 413, ["4096"]),  # body over max_body_bytes
]


@pytest.mark.parametrize(("body", "status", "words"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_that_says_why_and_the_server_keeps_serving(client, body, status, words):
    if isinstance(body, bytes):
        r = client.post("/v1/recommend", content=body, headers={"Content-Type": "application/json"})
    else:
        r = client.post("/v1/recommend", json=body)
    assert r.status_code == status, r.text
    error = r.json()
    assert all(w in error["error"] for w in words), error["error"]
    assert error["request_id"] == r.headers["X-Request-ID"] and "Traceback" not in r.text
    assert client.post("/v1/recommend", json={"history": ["i1"], "k": 2}).status_code == 200


def test_streamed_body_over_the_limit_is_cut_off_with_413(client):
    chunks = (b'{"history": ["' if n == 0 else b"x" * 1000 for n in range(10))  # chunked: no Content-Length
    r = client.post("/v1/recommend", content=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "4096" in r.json()["error"]


@pytest.mark.parametrize(("method", "path", "body", "status", "word"), [
    ("GET", "/v1/items/nope", None, 404, "unknown item id"),  # unknown item
    ("GET", "/v2/whatever", None, 404, "no such endpoint"),  # unknown route
    ("DELETE", "/v1/recommend", None, 405, "not allowed"),  # wrong method
    ("POST", "/v1/recommend/batch", {"requests": []}, 422, "requests"),  # empty batch
    ("POST", "/v1/recommend/batch", {"requests": [{"history": ["i1"]}, {"history": ["zz"]}]}, 400,
     "requests[1]: unknown"),  # the bad query of a batch is named
])
def test_other_bad_requests(client, method, path, body, status, word):
    r = client.request(method, path, json=body)
    assert r.status_code == status and word in r.json()["error"]


def test_batch_over_the_request_limit_is_413(recommender):
    with TestClient(create_app(recommender, ServeConfig(max_batch_requests=2), DECODE)) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200)
        r = c.post("/v1/recommend/batch", json={"requests": [{"history": ["i1"]}] * 3})
        assert r.status_code == 413 and "at most 2" in r.json()["error"]


# ----------------------------------------------------------------------------- batching


def test_answers_are_identical_alone_and_micro_batched(live):
    histories = [[f"i{(n * 7 + j) % 40}" for j in range(1 + n % 5)] for n in range(8)]  # different lengths
    bodies = [{"history": h, "k": BEAM} for h in histories]
    with httpx.Client(base_url=live.url) as c:
        alone = [c.post("/v1/recommend", json=b).json() for b in bodies]
    live.batch_sizes.clear()

    async def together():
        async with httpx.AsyncClient(base_url=live.url) as c:
            return await asyncio.gather(*(c.post("/v1/recommend", json=b) for b in bodies))

    batched = [r.json() for r in asyncio.run(together())]
    assert max(live.batch_sizes) > 1, live.batch_sizes  # they did share a model call
    assert batched == alone


def test_queue_full_gets_503_with_retry_after_then_recovers():
    fake = FakeRecommender()
    app = create_app(fake, ServeConfig(max_queue=2, max_wait_ms=0, retry_after_s=3), DecodeConfig(batch_size=1))
    state = app.state.genrec

    async def scenario():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                while state.status != "ready":
                    await asyncio.sleep(0.01)
                fake.hold = True
                post = lambda: c.post("/v1/recommend", json={"history": ["a"], "k": 2})  # noqa: E731
                running = asyncio.create_task(post())
                while len(fake.calls) < 2:  # warm-up + the running one
                    await asyncio.sleep(0.01)
                queued = [asyncio.create_task(post()) for _ in range(2)]
                while state.batcher.depth < 2:
                    await asyncio.sleep(0.01)
                refused = await post()
                fake.hold = False
                fake.release.set()
                done = await asyncio.gather(running, *queued)
                return refused, done, await post()

    refused, done, after = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "3"
    assert "queue" in refused.json()["error"]
    assert [r.status_code for r in done] == [200, 200, 200] and after.status_code == 200


def test_batcher_keeps_requests_whole_drains_on_stop_and_survives_errors():
    calls = []

    def fn(queries):
        calls.append(list(queries))
        if "boom" in queries:
            raise RuntimeError("boom")
        return [q.upper() for q in queries]

    async def scenario():
        batcher = MicroBatcher(fn, max_batch_size=3, max_wait_ms=20, max_queue=10)
        batcher.start()
        jobs = [batcher.submit(["a", "b"]), batcher.submit(["c", "d"]), batcher.submit(["e", "f", "g", "h"])]
        results = await asyncio.gather(*jobs)
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(["boom"])
        with pytest.raises(QueueFull):
            await batcher.submit(list("x" * 11))
        pending = asyncio.ensure_future(batcher.submit(["z"]))
        await asyncio.sleep(0)
        await batcher.stop()  # drains: the queued request is still answered
        with pytest.raises(Unavailable, match="shutting down"):
            await batcher.submit(["late"])
        return results, pending.result()

    results, last = asyncio.run(scenario())
    assert results == [["A", "B"], ["C", "D"], ["E", "F", "G", "H"]] and last == ["Z"]
    assert ["a", "b", "c", "d"] not in calls and ["e", "f", "g", "h"] in calls  # whole requests, capped at 3


# ----------------------------------------------------------------------------- access, readiness, errors, metrics


def test_api_key_guards_v1_but_not_probes(recommender, monkeypatch, tmp_path):
    monkeypatch.setenv("GENREC_API_KEY", "s3cret")
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    for config, key in ((ServeConfig(), "s3cret"), (ServeConfig(api_key_file=str(key_file)), "from-file")):
        c = ready_client(create_app(recommender, config, DECODE))
        body = {"history": ["i1"], "k": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {key}"}):
            r = c.post("/v1/recommend", json=body, headers=headers)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer" and "API key" in r.text
        assert c.get("/v1/items/i1").status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        assert c.post("/v1/recommend", json=body, headers=auth).status_code == 200
        assert all(c.get(p).status_code == 200 for p in ("/healthz", "/readyz", "/metrics"))
        c.__exit__(None, None, None)


def test_api_key_sources(monkeypatch, tmp_path):
    monkeypatch.delenv("MY_KEY", raising=False)
    assert load_api_key(ServeConfig(api_key_env="MY_KEY")) is None
    monkeypatch.setenv("MY_KEY", " k1 ")
    assert load_api_key(ServeConfig(api_key_env="MY_KEY")) == "k1"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_api_key(ServeConfig(api_key_file=str(tmp_path / "empty")))
    with pytest.raises(SystemExit):  # no flag takes the key's value on the command line
        make_parser().parse_args_into_dataclasses(args=["ckpt", "--api-key", "k1"])


def test_readyz_is_503_until_the_model_has_loaded_and_answered_a_warm_up_query():
    gate, fake = threading.Event(), FakeRecommender()
    app = create_app(lambda: gate.wait(20) and fake, ServeConfig(retry_after_s=2), DECODE)
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["Retry-After"] == "2"
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/recommend", json={"history": ["a"], "k": 1})
        assert r.status_code == 503 and "not ready" in r.json()["error"] and r.headers["Retry-After"] == "2"
        gate.set()
        wait_until(lambda: c.get("/readyz").status_code == 200)
        assert fake.calls == [1]  # the warm-up query
        assert c.post("/v1/recommend", json={"history": ["a"], "k": 1}).status_code == 200


def test_a_failing_model_gives_500_without_a_traceback_and_the_server_recovers(caplog):
    fake = FakeRecommender()
    c = ready_client(create_app(fake, ServeConfig(), DecodeConfig(beam=2)))
    fake.fail = True
    r = c.post("/v1/recommend", json={"history": ["a"], "k": 1})
    assert r.status_code == 500 and r.json() == {"error": "internal error", "request_id": r.headers["X-Request-ID"]}
    assert "secret" not in r.text and "Traceback" not in r.text
    assert any(r.headers["X-Request-ID"] in rec.getMessage() for rec in caplog.records if rec.exc_info)
    fake.fail = False
    assert c.post("/v1/recommend", json={"history": ["a"], "k": 1}).status_code == 200
    c.__exit__(None, None, None)


def test_metrics_and_request_log(client, caplog):
    caplog.set_level("INFO", logger="genrec.serving.access")
    client.post("/v1/recommend", json={"history": ["i1"], "k": 2}, headers={"X-Request-ID": "log-me"})
    text = client.get("/metrics").text
    assert 'genrec_requests_total{endpoint="/v1/recommend",status="200"}' in text
    assert 'genrec_request_seconds_bucket{endpoint="/v1/recommend"' in text
    assert "genrec_batch_queries_count" in text and "genrec_queue_depth 0.0" in text
    assert any('"request_id": "log-me"' in r.getMessage() and '"status": 200' in r.getMessage()
               for r in caplog.records)


def test_openapi_and_docs_are_served(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/recommend/batch", "/v1/items/{item_id}", "/healthz", "/readyz"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


# ----------------------------------------------------------------------------- real server: fuzzing, shutdown


def test_fuzzing_the_openapi_spec_finds_no_5xx(live):
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    fuzz = settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    with httpx.Client(base_url=live.url) as http:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @fuzz
            @given(case=schema.as_strategy(mode))
            def check(case):
                response = case.call(base_url=live.url)
                assert response.status_code < 500, (case.path, case.body, response.text)

            check()

        @fuzz
        @given(body=st.binary(max_size=300), path=st.sampled_from(["/v1/recommend", "/v1/recommend/batch"]))
        def garbage(body, path):
            assert http.post(path, content=body, headers={"Content-Type": "application/json"}).status_code < 500

        garbage()
        assert http.post("/v1/recommend", json={"history": ["i1"], "k": 2}).status_code == 200


def test_graceful_shutdown_finishes_running_and_queued_requests():
    fake = FakeRecommender()
    app = create_app(fake, ServeConfig(max_wait_ms=0), DecodeConfig(beam=2, batch_size=1))
    with serve_in_thread(app) as server:
        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200)
        fake.hold = True
        results = []

        def post():
            results.append(httpx.post(server.url + "/v1/recommend", json={"history": ["a"], "k": 1}, timeout=30))

        threads = [threading.Thread(target=post) for _ in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: len(fake.calls) == 2 and app.state.genrec.batcher.depth == 1)  # one running, one queued
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        time.sleep(0.2)
        fake.release.set()
        for t in (*threads, stopper):
            t.join(30)
        assert [r.status_code for r in results] == [200, 200] and not server.thread.is_alive()


# ----------------------------------------------------------------------------- config and CLI


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backend": "onnx"}, "--backend"),  # unknown backend
    ({"max_queue": 0}, "--max-queue"),  # queue must hold something
    ({"max_wait_ms": -1}, "--max-wait-ms"),  # negative wait
    ({"max_batch_requests": 0}, "--max-batch-requests"),  # batches hold at least one query
    ({"max_body_bytes": 10}, "--max-body-bytes"),  # too small to hold a request
    ({"api_key_env": "NOT A NAME"}, "environment variable"),  # env var name
    ({"port": 70000}, "--port"),  # port range
])
def test_serve_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(**kwargs)


def test_serve_cli_parses_flags_and_checks_the_checkpoint(tmp_path, capsys):
    config, decode, rest = make_parser().parse_args_into_dataclasses(
        args=[str(tmp_path), "--port", "9000", "--max-wait-ms", "2", "--beam", "30", "--batch-size", "1"])
    assert (rest.checkpoint, config.port, config.max_wait_ms, decode.beam, decode.batch_size) == (
        str(tmp_path), 9000, 2.0, 30, 1)
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_app(tmp_path, config, decode)
    with pytest.raises(SystemExit) as exit_:
        make_parser().parse_args(["--help"])
    assert exit_.value.code == 0 and "--max-wait-ms" in capsys.readouterr().out


# ----------------------------------------------------------------------------- vLLM backend


def _constrained_step(model, trie):
    """What vLLM's processed log-probs give under the trie processor: a softmax over the allowed tokens."""

    def step(rows):
        out = []
        for prompt, generated in rows:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + generated])).logits[0, -1]
            allowed = trie.allowed_tokens(generated)
            logp = torch.log_softmax(logits[allowed], dim=-1)
            out.append(dict(zip(allowed, logp.tolist())))
        return out

    return step


def test_vllm_backend_beam_search_is_exact_and_stays_in_the_catalog(recommender):
    trie = recommender.trie
    step = _constrained_step(recommender.model, trie)
    backend = VLLMRecommender(recommender, step)
    (rec,) = backend.recommend([["i1", "i2"]], DecodeConfig(beam=len(SIDS)), k=10)  # beam = catalog: exhaustive
    prompt = recommender.tokenizer(recommender.prompt(["i1", "i2"]), add_special_tokens=False)["input_ids"]
    brute = {}
    for iid in SIDS:
        tokens = recommender.tokenizer.convert_tokens_to_ids(sid_tokens(SIDS[iid])) + [trie.eos_token_id]
        brute[iid] = sum(step([(prompt, tokens[:n])])[0][tokens[n]] for n in range(len(tokens)))
    best = sorted(brute, key=brute.get, reverse=True)[:10]
    assert rec.items == best and rec.scores == pytest.approx([brute[i] for i in best], abs=1e-5)
    assert max_fanout(trie) == 6  # 5 children at the widest node, plus EOS
    narrow = constrained_beam_search(step, [prompt], trie, beam=3)[0]
    assert len(narrow.items) == 3 and set(narrow.items) <= set(SIDS)


@pytest.mark.gpu
def test_vllm_backend_serves_real_items_on_gpu(tmp_path):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from test_client import write_checkpoint

    from genrec.serving.vllm_backend import load_vllm_recommender

    write_checkpoint(tmp_path / "ckpt")
    backend = load_vllm_recommender(tmp_path / "ckpt", gpu_memory_utilization=0.2, enforce_eager=True)
    c = ready_client(create_app(backend, ServeConfig(backend="vllm"), DECODE))
    body = c.post("/v1/recommend", json={"history": ["i1", "i2"], "k": 5}).json()
    assert body["returned"] == 5 and {it["item_id"] for it in body["items"]} <= set(SIDS)
    c.__exit__(None, None, None)


def test_engine_process_answers_like_the_in_process_model(tmp_path):
    """`genrec serve`'s default engine runs the model in a child process; its answers equal the model's own."""
    from genrec.checkpoint import checkpoint_metadata, save_checkpoint
    from genrec.recommender import load_recommender
    from genrec.serving.engine import ProcessRecommender

    model, tokenizer = tiny_model_and_tokenizer()
    save_checkpoint(model, tokenizer, tmp_path / "ckpt", SIDS, checkpoint_metadata(None, False), titles=TITLES,
                    interests=tiny_interests(SIDS))
    histories = [["i1", "i2"], ["i3"], ["i4", "i5", "i6"]]
    expected = load_recommender(tmp_path / "ckpt", device="cpu").recommend(histories, DECODE, k=5)
    engine = ProcessRecommender(tmp_path / "ckpt", device="cpu", threads=1)
    try:
        assert engine.titles == TITLES and set(engine.sid_strings) == set(SIDS) and len(engine.interests) == len(SIDS)
        answers = engine.recommend(histories, DECODE, k=5)
        assert [a.items for a in answers] == [e.items for e in expected]
        for a, e in zip(answers, expected, strict=True):
            assert a.scores == pytest.approx(e.scores, abs=1e-5)
        with pytest.raises(RuntimeError, match="the engine failed on a batch"):
            engine.recommend([["i1"]], DecodeConfig(beam=1, batch_size=1), k=5)  # k above the beam: a bad batch
        assert engine.recommend(histories[:1], DECODE, k=5)[0].items == expected[0].items  # and it goes on
    finally:
        engine.close()
    assert not engine._process.is_alive()
