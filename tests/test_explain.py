"""Explanations: each recommended item's interests closest to the history's, computed from vectors stored with the
checkpoint (no model call), off unless a request asks, documented in the OpenAPI schema, a clear note when the model
has no interests, and the same in the API, the client and `genrec recommend`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_interests import fake_encode, tiny_interests
from test_serving import DECODE, SIDS, TITLES, ready_client, tiny_model_and_tokenizer

from genrec.artifacts import Run
from genrec.checkpoint import CHECKPOINT_INTERESTS, checkpoint_metadata, load_item_interests, save_checkpoint
from genrec.client import format_answer
from genrec.explain import ItemInterests
from genrec.io import write_jsonl
from genrec.recommender import Recommender, load_recommender
from genrec.serving.answers import NO_INTERESTS
from genrec.serving.app import create_app
from genrec.serving.config import ServeConfig
from genrec.training import explanation_interests

VECTORS = {"woodworking": [1.0, 0.0], "joinery": [0.8, 0.6], "gifts": [0.0, 1.0], "knots": [-1.0, 0.0]}


def hand_made() -> ItemInterests:
    return ItemInterests.build({"saw": ["woodworking", "gifts"], "chisel": ["joinery"], "rope": ["knots"],
                                "box": []}, lambda texts: np.array([VECTORS[t] for t in texts]))


@pytest.mark.parametrize(
    "history, items, top, expected",
    [
        # each interest of the saw meets its closest history interest, best first
        (["chisel"], ["saw"], 3, [[("woodworking", 0.8, "chisel", "joinery"), ("gifts", 0.6, "chisel", "joinery")]]),
        # top keeps the best; a history item listed twice counts once
        (["chisel", "chisel"], ["saw"], 1, [[("woodworking", 0.8, "chisel", "joinery")]]),
        # the closest of several history items wins, and says which it was
        (["rope", "saw"], ["chisel"], 3, [[("joinery", 0.8, "saw", "woodworking")]]),
        # an item without interests, or unknown: no connections
        (["chisel"], ["box", "nope"], 3, [[], []]),
        # a history without interests: none for any item
        (["box"], ["saw", "chisel"], 3, [[], []]),
        # a connection under the minimum score (knots / joinery: -0.8) is no reason
        (["chisel"], ["rope"], 3, [[]]),
        # an item recommended again connects to the other history items, not to itself
        (["saw", "chisel"], ["saw"], 1, [[("woodworking", 0.8, "chisel", "joinery")]]),
        (["saw"], ["saw"], 3, [[]]),
    ],
)
def test_connections_are_each_items_interests_closest_to_the_history(history, items, top, expected):
    found = hand_made().explain(history, items, top=top, min_score=0.3)
    assert [[(c.interest, round(c.score, 4), c.history_item, c.history_interest) for c in conns]
            for conns in found] == expected


def test_build_embeds_each_distinct_text_once_and_keeps_the_first_per_item():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return fake_encode(texts)

    interests = ItemInterests.build({"a": ["x y", "x y", " ", "z"], "b": ["z", "w", "v"], "c": []}, encode,
                                    max_per_item=2)
    assert calls == [["w", "x y", "z"]] and len(interests) == 2  # c has none: it is not indexed
    assert {iid: [interests.texts[r] for r in rows] for iid, rows in interests.items.items()} == {
        "a": ["x y", "z"], "b": ["z", "w"]}
    assert np.allclose(np.linalg.norm(interests.vectors, axis=1), 1.0)


# ----------------------------------------------------------------------------- in the checkpoint


def test_interests_travel_with_the_checkpoint(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer()
    interests = tiny_interests(SIDS)
    save_checkpoint(model, tokenizer, tmp_path / "with", SIDS, checkpoint_metadata(None, False), titles=TITLES,
                    interests=interests)
    loaded = load_item_interests(tmp_path / "with")
    assert loaded.texts == interests.texts and loaded.items == interests.items
    assert np.allclose(loaded.vectors, interests.vectors, atol=1e-3)  # stored as float16
    assert load_recommender(tmp_path / "with", device="cpu").interests.items == interests.items
    save_checkpoint(model, tokenizer, tmp_path / "without", SIDS, checkpoint_metadata(None, False))
    assert load_item_interests(tmp_path / "without") is None
    (tmp_path / "with" / CHECKPOINT_INTERESTS).write_text(json.dumps({"texts": ["a"], "items": {"i1": [5]}}))
    with pytest.raises(ValueError, match=r"interests.json and interest_vectors.npy do not fit together .* re-run"):
        load_item_interests(tmp_path / "with")


def test_training_embeds_the_runs_positive_interests(tmp_path, monkeypatch):
    import genrec.encoders

    monkeypatch.setattr(genrec.encoders, "load_encoder", lambda cfg: type("E", (), {"encode": staticmethod(
        fake_encode)}))
    run = Run(tmp_path)
    assert explanation_interests(run, ["a", "b"]) is None  # no mine stage: nothing to explain with
    interest = {"confidence": 0.9, "model": "m"}
    write_jsonl(tmp_path / "interests.jsonl", [
        {"item_id": "a", "interests": [{"text": "lab safety", **interest, "positive": True},
                                       {"text": "misc", **interest, "positive": False}]},
        {"item_id": "b", "interests": [{"text": "lab glassware", **interest}]},  # unlabelled: positive
        {"item_id": "z", "interests": [{"text": "not in the catalog", **interest}]}])
    interests = explanation_interests(run, ["a", "b"])
    assert {iid: [interests.texts[r] for r in rows] for iid, rows in interests.items.items()} == {
        "a": ["lab safety"], "b": ["lab glassware"]}


# ----------------------------------------------------------------------------- API, client, CLI


@pytest.fixture(scope="module")
def explaining():
    model, tokenizer = tiny_model_and_tokenizer()
    recommender = Recommender(model, tokenizer, SIDS, bf16=False, titles=TITLES, interests=tiny_interests(SIDS))
    client = ready_client(create_app(recommender, ServeConfig(), DECODE))
    yield client
    client.__exit__(None, None, None)


def test_explanations_come_only_on_request(explaining):
    plain = explaining.post("/v1/recommend", json={"history": ["i1", "i2"], "k": 4}).json()
    assert all("explanation" not in item for item in plain["items"]) and "explanation_note" not in plain
    body = explaining.post("/v1/recommend", json={"history": ["i1", "i2"], "k": 4, "explain": True}).json()
    assert [it["item_id"] for it in body["items"]] == [it["item_id"] for it in plain["items"]]
    assert "explanation_note" not in body
    for item in body["items"]:
        assert 1 <= len(item["explanation"]) <= 3
        for match in item["explanation"]:
            assert match["history_item"] in ("i1", "i2") and -1 <= match["score"] <= 1
            assert match["history_interest"] in ("topic 1", "use case 1", "topic 2", "use case 2")
        scores = [m["score"] for m in item["explanation"]]
        assert scores == sorted(scores, reverse=True)
    queries = [{"history": ["i1"], "k": 2, "explain": True}, {"history": ["i3"], "k": 2}]
    batch = explaining.post("/v1/recommend/batch", json={"requests": queries}).json()["results"]
    assert batch == [explaining.post("/v1/recommend", json=q).json() for q in queries]


def _answer(interests: ItemInterests | None, query: dict) -> dict:
    model, tokenizer = tiny_model_and_tokenizer()
    client = ready_client(create_app(Recommender(model, tokenizer, SIDS, bf16=False, interests=interests),
                                     ServeConfig(), DECODE))
    try:
        return client.post("/v1/recommend", json=query).json()
    finally:
        client.__exit__(None, None, None)


def test_without_interests_a_note_says_why():
    body = _answer(None, {"history": ["i1"], "k": 2, "explain": True})
    assert body["explanation_note"] == NO_INTERESTS and all("explanation" not in it for it in body["items"])
    assert body["returned"] == 2


def test_a_history_without_interests_gets_a_note():
    body = _answer(tiny_interests([iid for iid in SIDS if iid != "i7"]), {"history": ["i7"], "k": 2, "explain": True})
    assert body["explanation_note"] == "no history item has interests to connect to"
    assert all(item["explanation"] == [] for item in body["items"])


def test_the_openapi_schema_documents_explanations(explaining):
    schemas = explaining.get("/openapi.json").json()["components"]["schemas"]
    assert "Say why" in schemas["RecommendRequest"]["properties"]["explain"]["description"]
    assert "explanation" in schemas["RecommendedItem"]["properties"]
    assert "explanation_note" in schemas["RecommendResponse"]["properties"]
    assert set(schemas["InterestMatch"]["properties"]) == {"interest", "score", "history_item", "history_interest"}


@pytest.mark.parametrize("body", [{"history": ["i1"], "explain": "yes"}, {"history": ["i1"], "explain": 1}])
def test_explain_must_be_a_boolean(explaining, body):
    r = explaining.post("/v1/recommend", json=body)
    assert r.status_code == 422 and "explain" in r.json()["error"]


def test_the_table_shows_each_items_reasons_under_it():
    answer = {"items": [{"item_id": "saw", "title": "Saw", "sid": "<a_1>", "score": -0.1, "explanation": [
        {"interest": "woodworking", "score": 0.8, "history_item": "chisel", "history_interest": "joinery"}]},
        {"item_id": "box", "title": "Box", "sid": "<a_2>", "score": -0.5, "explanation": []}],
        "explanation_note": None}
    assert format_answer(answer).splitlines() == [
        "rank  score    item_id  sid    title",
        "1     -0.1000  saw      <a_1>  Saw",
        "      why: 'woodworking' ~ 'joinery' (history item chisel) 0.80",
        "2     -0.5000  box      <a_2>  Box"]
