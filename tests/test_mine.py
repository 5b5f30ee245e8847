"""The mine stage: config checks, answer schemas, the store across failed / killed runs (fake OpenAI server on
loopback), a local transformers model that answers garbage, the offline keyphrase extractor, merging, and the
interests.jsonl reader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from fake_openai import FakeOpenAI, Reply

from genrec.artifacts import INTERESTS
from genrec.artifacts import INTERESTS_STORE as STORE
from genrec.interests import miners
from genrec.interests.keyphrase import KeyphraseConfig, candidate_phrases, extract_keyphrases, mmr
from genrec.interests.merge import merge_interests
from genrec.interests.mine import MineConfig, main, run_mine
from genrec.interests.miners import parse_archetype, parse_interests
from genrec.interests.schema import read_interests
from genrec.interests.store import InterestStore

CATALOG = [  # (title, description): three themes, two items each
    ("Nitrile Gloves Box", "Disposable nitrile gloves for lab work and food handling."),
    ("Blue Nitrile Exam Gloves", "Powder free exam gloves for lab work, cleaning and auto repair."),
    ("Clear Safety Glasses", "Anti fog safety glasses for woodworking and shooting ranges."),
    ("Tinted Safety Glasses", "Scratch resistant safety glasses for outdoor work and woodworking."),
    ("Wood Screws Assortment", "Wood screws for deck building, cabinets and furniture repair."),
    ("Deck Screws Stainless", "Stainless deck screws for deck building and fence repair."),
]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    items = [{"item_id": str(i), "title": t, "description": f"{d} SKU-{i}",
              "brand": "Acme", "categories": "Industrial"} for i, (t, d) in enumerate(CATALOG)]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    return tmp_path


def openai(server: FakeOpenAI, name: str = "fake-a", **kw) -> dict:
    return {"type": "openai", "model": name, "base_url": server.url, "timeout": 2.0, "max_attempts": 2,
            "backoff_base": 0.01, "backoff_max": 0.05, "concurrency": 4, **kw}


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def interest_requests(server: FakeOpenAI) -> dict[str, int]:
    """Requests per item id (the SKU-<id> marker in the prompt)."""
    return {key.removeprefix("SKU-"): n for key, n in server.counts.items()}


# ----------------------------------------------------------------------------- config and schemas


@pytest.mark.parametrize("options, message", [
    ({"backends": []}, "non-empty list"),
    ({"backends": [{"type": "llm"}]}, "type='llm'.*openai, transformers, keyphrase"),  # "llm" is not a backend type
    ({"backends": [{"type": "openai"}]}, r"backends\[0\] \(openai\): model is empty"),
    ({"backends": [{"type": "openai", "model": "m", "api_key": "k"}]}, r"unknown option\(s\) \['api_key'\]"),
    ({"backends": [{"type": "openai", "model": "m", "api_key_env": "sk-live-1"}]}, "NAME of an environment"),
    ({"backends": [{"type": "keyphrase"}, {"type": "keyphrase", "diversity": 0.2}]}, "used twice"),
    ({"backends": [{"type": "keyphrase", "diversity": 2}]}, "diversity=2"),
    ({"merge_threshold": 0}, "merge_threshold"),
    ({"max_interests": 0}, "max_interests"),
    ({"interests_prompt": "/no/such/prompt.txt"}, "does not exist"),
])
def test_mine_config_says_what_to_fix(options, message):
    with pytest.raises(ValueError, match=message) as err:
        MineConfig(**options)
    assert "sk-live-1" not in str(err.value)  # a key pasted into the config is never echoed


def test_prompt_files_must_hold_the_item(tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_text('Answer {"interests": []}')  # no {item}, and undoubled JSON braces
    with pytest.raises(ValueError, match="must contain {item}"):
        MineConfig(interests_prompt=str(bad))
    assert "{item}" in MineConfig().prompts()["interests"] and "demographics" in MineConfig().prompts()["archetype"]


@pytest.mark.parametrize("obj, expected", [
    ({"interests": [{"interest": "woodworking", "confidence": 0.9}]}, [("woodworking", 0.9)]),  # the asked shape
    ([{"descriptor": "home brewing", "confidence": "0.7"}], [("home brewing", 0.7)]),  # bare list, DeepInterest key
    ({"interests": [{"interest": "a", "confidence": 85}]}, [("a", 0.85)]),  # a percentage
    ({"interests": [{"interest": "a", "confidence": 1.5}, {"interest": "b", "confidence": 0.5}]},
     [("b", 0.5)]),  # 1.5 is neither a probability nor a percentage: that entry goes
    ({"interests": [{"interest": "A", "confidence": 0.9}, {"interest": "a ", "confidence": 0.8}]},
     [("A", 0.9)]),  # case-insensitive duplicates
    ({"interests": [{"interest": f"i{k}", "confidence": 0.5} for k in range(9)]},
     [(f"i{k}", 0.5) for k in range(3)]),  # cut to max_interests, in the model's order
])
def test_parse_interests(obj, expected):
    assert [(i["text"], i["confidence"]) for i in parse_interests(obj, 3)] == expected


@pytest.mark.parametrize("obj, message", [
    ({"keywords": []}, "expected"),  # not the interests schema
    ({"interests": [{"interest": "woodworking"}]}, "'confidence' must be a number"),  # missing field
    ({"interests": [{"interest": "x", "confidence": True}]}, "'confidence' must be a number"),  # a bool is no number
    ({"interests": [{"interest": "", "confidence": 0.5}]}, "phrase of 1-120"),
    ({"interests": []}, "empty"),
])
def test_parse_interests_rejects(obj, message):
    with pytest.raises(ValueError, match=message):
        parse_interests(obj, 5)


def test_parse_archetype():
    assert parse_archetype({"archetype": " Woodworkers  who build. "}) == "Woodworkers who build."
    with pytest.raises(ValueError, match="archetype"):
        parse_archetype({"audience": "x"})


# ----------------------------------------------------------------------------- the stage with an LLM endpoint


def test_openai_backend_writes_interests_with_provenance(run_dir, fake):
    server = fake()
    summary = run_mine(run_dir, MineConfig(backends=[openai(server)]))
    recs = read_interests(run_dir / INTERESTS)
    assert list(recs) == [str(i) for i in range(6)] and summary["covered"] == 6 and summary["failed"] == 0
    first = recs["0"]["interests"][0]
    assert first["text"] == "nitrile projects" and first["confidence"] == 0.9 and first["model"] == "fake-a"
    assert first["models"] == ["fake-a"] and len(first["prompt_hash"]) == 16
    assert recs["0"]["archetype"].startswith("People who") and recs["0"]["archetype_model"] == "fake-a"
    assert summary["prompt_tokens"] > 0 and summary["completion_tokens"] > 0
    assert set(server.counts.values()) == {2}  # interests + archetype prompt per item
    run_mine(run_dir, MineConfig(backends=[openai(server)]))  # everything is stored: nothing is asked again
    assert set(server.counts.values()) == {2}


def test_failed_items_are_recorded_and_retried_alone(run_dir, fake):
    healthy = False
    answered = []

    def script(prompt, n):  # the server starts failing after three answers
        if healthy or len(answered) < 3:
            answered.append(prompt)
            return Reply()
        return Reply(500)

    server = fake(script)
    cfg = MineConfig(backends=[openai(server, concurrency=1)], archetype=False)
    with pytest.raises(RuntimeError, match=r"3 of 6 items have no valid answer.*HTTP 500.*\['3', '4', '5'\]"):
        run_mine(run_dir, cfg)
    assert not (run_dir / INTERESTS).exists()  # no half-made interests.jsonl
    with InterestStore(run_dir / STORE) as store:
        failures = store.failures()
        assert sorted(iid for iid, _, _ in failures) == ["3", "4", "5"]
        assert failures["3", "fake-a", "interests"]["reason"].startswith("HTTP 500")
    healthy = True
    assert run_mine(run_dir, cfg)["covered"] == 6
    asked = interest_requests(server)
    assert asked == {"0": 1, "1": 1, "2": 1, "3": 3, "4": 3, "5": 3}  # finished items were never asked again
    with InterestStore(run_dir / STORE) as store:
        assert store.failures() == {}


def test_a_killed_run_resumes_without_asking_again(run_dir, fake, monkeypatch):
    server = fake()
    cfg = MineConfig(backends=[openai(server, concurrency=1)], archetype=False)
    put = InterestStore.put
    calls = []

    def put_then_die(self, *args, **kw):
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the fourth answer is being stored
        calls.append(args[0])
        return put(self, *args, **kw)

    monkeypatch.setattr(InterestStore, "put", put_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_mine(run_dir, cfg)
    monkeypatch.setattr(InterestStore, "put", put)
    assert run_mine(run_dir, cfg)["covered"] == 6
    asked = interest_requests(server)
    assert [asked[i] for i in calls] == [1, 1, 1] and sum(asked.values()) == 7  # only the lost answer is re-asked


def test_malformed_answers_never_reach_the_store(run_dir, fake):
    server = fake(lambda prompt, n: "Sure! It is for gloves." if "SKU-1" in prompt else Reply())
    cfg = MineConfig(backends=[openai(server)], archetype=False, allow_partial=True)
    summary = run_mine(run_dir, cfg)
    recs = read_interests(run_dir / INTERESTS)
    assert summary["failed"] == 1 and recs["1"]["interests"] == [] and recs["1"]["missing"] == ["fake-a:interests"]
    assert recs["0"]["interests"] and "missing" not in recs["0"]
    with InterestStore(run_dir / STORE) as store:
        assert "1" not in store.results("fake-a", "interests", {str(i): "" for i in range(6)} | {"1": "any"})
        failure = store.failures()["1", "fake-a", "interests"]
        assert "no complete JSON object" in failure["reason"] and failure["answer"] == "Sure! It is for gloves."


def test_two_models_merge_with_provenance(run_dir, fake):
    server = fake()
    cfg = MineConfig(backends=[openai(server, "fake-a"), openai(server, "fake-b")], archetype=False)
    run_mine(run_dir, cfg)
    interests = read_interests(run_dir / INTERESTS)["2"]["interests"]
    assert [i["text"] for i in interests] == ["clear projects", "safety projects", "glasses projects"]
    assert all(i["models"] == ["fake-a", "fake-b"] and len(i["sources"]) == 2 for i in interests)


def test_cli_runs_the_stage(run_dir, fake):
    server = fake()
    backends = json.dumps([openai(server)])
    summary = main(["--run_dir", str(run_dir), "--backends", backends, "--archetype", "false", "--max_interests", "2",
                    "--template", "{title}. {description}"])  # text options are taken verbatim, not as YAML
    assert summary["covered"] == 6 and summary["interests_per_item"] == 2
    with pytest.raises(ValueError, match=r"genrec mine: unknown option\(s\) \['colour'\]"):
        main(["--run_dir", str(run_dir), "--config", str(write_yaml(run_dir / "m.yaml", "mine:\n  colour: red\n"))])


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Qwen3 with the offline WordPiece tokenizer and a chat template."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from genrec.modeling import build_default_tokenizer

    torch.manual_seed(0)
    tok = build_default_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %} A:{% endif %}")
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, head_dim=16,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    path = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_local_model_garbage_is_recorded_as_failures(run_dir, tiny_lm):
    backend = {"type": "transformers", "model_path": str(tiny_lm), "max_new_tokens": 6, "batch_size": 4,
               "device": "cpu"}
    with pytest.raises(RuntimeError, match=r"tiny-lm\w* \(interests\): 6 of 6 items have no valid answer"):
        run_mine(run_dir, MineConfig(backends=[backend], archetype=False))
    with InterestStore(run_dir / STORE) as store:
        failures = store.failures()
    assert len(failures) == 6 and all("malformed answer" in f["reason"] for f in failures.values())


# ----------------------------------------------------------------------------- the offline extractor


@pytest.mark.parametrize("text, expected", [
    ("Nitrile gloves, for the lab", ["nitrile", "nitrile gloves", "gloves", "lab"]),  # punctuation, stop words
    ("12V DC motor 3-pack", ["dc motor", "motor"]),  # numbers break phrases; "dc" is too short alone
    ("gap-filling CA glue", ["gap-filling", "gap-filling ca", "gap-filling ca glue", "ca glue", "glue"]),  # hyphens
])
def test_candidate_phrases(text, expected):
    assert candidate_phrases(text, 3) == expected


def test_mmr_trades_relevance_for_variety():
    sims_to_item = np.array([0.9, 0.89, 0.88, 0.5])
    phrase_sims = np.array([[1, .98, .97, 0], [.98, 1, .97, 0], [.97, .97, 1, 0], [0, 0, 0, 1]])
    assert mmr(sims_to_item, phrase_sims, 2, diversity=0.0) == [0, 1]  # pure relevance: two near-duplicates
    assert mmr(sims_to_item, phrase_sims, 2, diversity=0.5) == [0, 3]  # MMR: the distinct phrase instead


def test_keyphrase_stage_covers_every_item_from_its_own_text(run_dir, monkeypatch):
    summary = run_mine(run_dir, MineConfig(max_interests=3))
    recs = read_interests(run_dir / INTERESTS)
    items = [json.loads(line) for line in (run_dir / "items.jsonl").read_text().splitlines()]
    assert summary["covered"] == len(items) == len(recs)
    for it in items:
        phrases = [i["text"] for i in recs[it["item_id"]]["interests"]]
        text = " ".join(f"{it['title']}. {it['categories']}. {it['description']}".lower().split())
        assert 1 <= len(phrases) <= 3 and len(set(phrases)) == len(phrases)
        assert all(p in text for p in phrases), (phrases, text)  # verbatim pieces of the item's own text
        assert all(0 <= i["confidence"] <= 1 and i["model"] == "keyphrase" for i in recs[it["item_id"]]["interests"])
        assert "acme" not in " ".join(phrases)  # the brand is a name, not an interest
    monkeypatch.setattr(miners, "extract_keyphrases", lambda *a, **kw: pytest.fail("asked again"))
    run_mine(run_dir, MineConfig(max_interests=3))  # stored: not extracted again


def test_extract_keyphrases_diversity_spreads_the_phrases():
    items = [{"item_id": str(i), "title": t, "description": d} for i, (t, d) in enumerate(CATALOG)]

    vocab = sorted({w for t, d in CATALOG for w in re.findall(r"[a-z]+", f"{t} {d}".lower())})

    def encode(texts):  # bag of words: a deterministic, instant stand-in for the sentence encoder
        words = [re.findall(r"[a-z]+", t.lower()) for t in texts]
        return np.array([[ws.count(v) for v in vocab] for ws in words], dtype=np.float32) + 1e-3

    relevant = extract_keyphrases(items, encode, 3, KeyphraseConfig(min_df=1, diversity=0.0))
    varied = extract_keyphrases(items, encode, 3, KeyphraseConfig(min_df=1, diversity=0.7))
    assert [p for p, _ in relevant[0]] == ["nitrile gloves box", "disposable nitrile gloves", "nitrile gloves"]
    assert {p for p, _ in varied[0]} == {"nitrile gloves box", "food handling", "lab work"}  # MMR: distinct uses
    assert all(0 <= c <= 1 for phrases in varied for _, c in phrases)


def test_merge_collapses_near_duplicates_and_keeps_provenance():
    mentions = [{"text": "woodworking", "confidence": 0.6, "model": "a", "prompt_hash": "h1"},
                {"text": "wood working", "confidence": 0.9, "model": "b", "prompt_hash": "h2"},
                {"text": "deck building", "confidence": 0.8, "model": "a", "prompt_hash": "h1"}]
    vecs = np.array([[1, 0], [0.995, 0.0999], [0, 1]], dtype=np.float32)
    merged = merge_interests(mentions, vecs, threshold=0.9)
    assert [m["text"] for m in merged] == ["wood working", "deck building"]  # agreed on first, then by confidence
    assert merged[0]["models"] == ["b", "a"] and merged[0]["confidence"] == 0.9
    assert merged[0]["mean_confidence"] == 0.75
    assert merged[0]["model"] == "b" and [s["text"] for s in merged[0]["sources"]] == ["wood working", "woodworking"]
    assert len(merge_interests(mentions, vecs, threshold=0.999)) == 3  # a stricter threshold keeps them apart


# ----------------------------------------------------------------------------- the interests.jsonl reader

GOOD = {"item_id": "1", "interests": [{"text": "woodworking", "confidence": 0.9, "model": "m"}], "archetype": None}


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a"]', "expected a JSON object"),
    (json.dumps({**GOOD, "item_id": 7}), "'item_id' must be a non-empty string"),
    (json.dumps({**GOOD, "interests": "woodworking"}), "'interests' must be a list"),
    (json.dumps({**GOOD, "interests": [{"text": "x", "confidence": "high", "model": "m"}]}),
     r"interests\[0\]: 'confidence' must be a number in \[0, 1\], got 'high'"),
    (json.dumps({**GOOD, "interests": [{"text": "x", "confidence": 1.2, "model": "m"}]}), "'confidence'"),
    (json.dumps({**GOOD, "interests": [{"text": " ", "confidence": 0.2, "model": "m"}]}), "'text'"),
    (json.dumps({**GOOD, "interests": [{"text": "x", "confidence": 0.2}]}), "'model' must be a string"),
    (json.dumps({**GOOD, "archetype": 3}), "'archetype'"),
    (json.dumps(GOOD), "appears twice"),  # the same item twice
])
def test_read_interests_names_file_and_line(tmp_path, line, message):
    path = tmp_path / INTERESTS
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=message) as err:
        read_interests(path)
    assert str(err.value).startswith(f"{path}:3: ") and "re-run genrec mine" in str(err.value)


def test_read_interests_reads_a_good_file(tmp_path):
    (tmp_path / INTERESTS).write_text(json.dumps(GOOD) + "\n")
    assert read_interests(tmp_path / INTERESTS) == {"1": GOOD}
    with pytest.raises(FileNotFoundError, match="run the mine stage"):
        read_interests(tmp_path / "nope.jsonl")
