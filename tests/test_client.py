"""`GenrecClient` and `genrec recommend`: retries only what is worth retrying (503, connection errors), raises the
server's message on a 4xx, and prints the same table from a server or from a checkpoint loaded in-process."""

from __future__ import annotations

import json

import httpx
import pytest
from fake_interests import tiny_interests
from test_serving import DECODE, SIDS, TITLES, tiny_model_and_tokenizer, wait_until

from genrec.checkpoint import checkpoint_metadata, save_checkpoint
from genrec.client import APIError, GenrecClient, ServerError, main
from genrec.recommender import load_recommender
from genrec.serving.app import create_app
from genrec.serving.config import ServeConfig
from genrec.serving.server import serve_in_thread


def write_checkpoint(path) -> None:
    model, tokenizer = tiny_model_and_tokenizer()
    save_checkpoint(model, tokenizer, path, SIDS, checkpoint_metadata(None, False, stage="sft"), titles=TITLES,
                    interests=tiny_interests(SIDS))


def scripted(responses):
    """A client whose transport answers from `responses` (an httpx.Response, or an exception to raise) in order;
    returns (client, seen requests, sleeps)."""
    seen, sleeps, queue = [], [], list(responses)

    def handler(request):
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = GenrecClient("http://genrec.test", api_key="k", retries=2, transport=httpx.MockTransport(handler),
                          sleep=sleeps.append)
    return client, seen, sleeps


OK = {"items": [], "k": 1, "returned": 0, "history": ["i1"], "note": None}


def test_client_retries_503_honouring_retry_after():
    busy = httpx.Response(503, headers={"Retry-After": "2"}, json={"error": "queue full", "request_id": "r"})
    client, seen, sleeps = scripted([busy, busy, httpx.Response(200, json=OK)])
    assert client.recommend(["i1"], k=1) == OK
    assert len(seen) == 3 and sleeps == [2.0, 2.0]
    assert seen[0].headers["Authorization"] == "Bearer k"
    assert json.loads(seen[0].content) == {"history": ["i1"], "k": 1, "exclude_history": False}


def test_client_backs_off_on_connection_errors_then_gives_up():
    refused = httpx.ConnectError("refused")
    client, seen, sleeps = scripted([refused, refused, httpx.Response(200, json=OK)])
    assert client.recommend(["i1"]) == OK and sleeps == [0.25, 0.5]
    client, seen, sleeps = scripted([refused] * 3)
    with pytest.raises(ConnectionError, match="3 attempts"):
        client.recommend(["i1"])
    client, seen, sleeps = scripted([httpx.Response(503, json={"error": "busy"})] * 3)
    with pytest.raises(ServerError, match="busy"):
        client.recommend(["i1"])
    assert len(seen) == 3 and sleeps == [0.25, 0.5]  # no Retry-After: exponential backoff


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422, 500])
def test_client_never_retries_4xx_or_500(status):
    client, seen, sleeps = scripted([httpx.Response(status, json={"error": "unknown items ['x']", "request_id": "r"})])
    error = APIError if status < 500 else ServerError
    with pytest.raises(error, match=r"unknown items \['x'\]") as info:
        client.recommend(["x"])
    assert len(seen) == 1 and sleeps == []
    if status < 500:
        assert isinstance(info.value, ValueError) and info.value.status_code == status


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("client") / "ckpt"
    write_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def server(checkpoint):
    app = create_app(load_recommender(checkpoint, device="cpu"), ServeConfig(), DECODE)
    with serve_in_thread(app) as live:
        wait_until(lambda: GenrecClient(live.url).ready())
        yield live


def test_client_against_a_real_server(server):
    with GenrecClient(server.url) as client:
        assert client.ready()
        answer = client.recommend(["i1", "Item i2"], k=3)
        assert answer["returned"] == 3 and answer["history"] == ["i1", "i2"]
        assert client.recommend_batch([["i1", "Item i2"], ["i4"]], k=3)[0] == answer
        assert client.item("i3") == {"item_id": "i3", "title": "Item i3", "sid": "<a_3><b_0><c_0>"}
        with pytest.raises(ValueError, match="ambiguous.*i5.*i6"):
            client.recommend(["Shared title"], k=3)
    assert not GenrecClient("http://127.0.0.1:9").ready()  # nothing listens there


def test_recommend_cli_prints_the_same_table_from_a_checkpoint_or_a_server(checkpoint, server, capsys):
    args = ["--history", "i1", "Item i2", "--k", "4", "--beam", str(DECODE.beam)]
    offline = main(["--checkpoint", str(checkpoint), *args])
    table = capsys.readouterr().out
    online = main(["--server", server.url, *args])
    assert capsys.readouterr().out == table and online == offline
    assert table.splitlines()[0].split() == ["rank", "score", "item_id", "sid", "title"]
    assert len(table.splitlines()) == 5 and offline["items"][0]["item_id"] in table
    main(["--checkpoint", str(checkpoint), "--json", *args])
    assert json.loads(capsys.readouterr().out) == offline


def test_recommend_cli_explains_from_a_checkpoint_or_a_server(checkpoint, server, capsys):
    args = ["--history", "i1", "i2", "--k", "3", "--beam", str(DECODE.beam), "--explain"]
    offline = main(["--checkpoint", str(checkpoint), *args])
    table = capsys.readouterr().out
    online = main(["--server", server.url, *args])
    assert capsys.readouterr().out == table and online == offline
    assert all(item["explanation"] for item in offline["items"])
    assert table.count("  why: ") == sum(len(item["explanation"]) for item in offline["items"])
    with GenrecClient(server.url) as client:
        assert client.recommend(["i1", "i2"], k=3, explain=True) == online
        assert client.recommend_batch([["i1", "i2"]], k=3, explain=True) == [online]


def test_recommend_cli_needs_exactly_one_source(checkpoint):
    with pytest.raises(ValueError, match="exactly one"):
        main(["--history", "i1"])
    with pytest.raises(ValueError, match="unknown items"):
        main(["--checkpoint", str(checkpoint), "--history", "nope"])
