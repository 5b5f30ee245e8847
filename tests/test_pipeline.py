from dataclasses import dataclass
from pathlib import Path

import pytest

from genrec import pipeline
from genrec.pipeline import Stage, pipeline_config_from_dict, run_pipeline


@dataclass
class CountConfig:
    value: int = 1
    fail: bool = False


CALLS: list[str] = []


def make_stage(name: str, after=()):
    def run(run_dir: Path, cfg: CountConfig) -> None:
        CALLS.append(name)
        (run_dir / f"{name}.partial").write_text("started")
        if cfg.fail:
            raise RuntimeError(f"{name} killed")
        (run_dir / f"{name}.out").write_text(str(cfg.value))

    return Stage(name, CountConfig, run, (f"{name}.out",), tuple(after))


@pytest.fixture
def toy_stages(monkeypatch):
    CALLS.clear()
    stages = {s.name: s for s in [make_stage("first"), make_stage("second", ["first"]),
                                  make_stage("third", ["second"])]}
    monkeypatch.setattr(pipeline, "STAGES", stages)
    return stages


def test_second_run_skips_finished_stages(toy_stages, tmp_path):
    cfg = pipeline_config_from_dict({"first": {"value": 3}})
    run_pipeline(cfg, tmp_path)
    assert CALLS == ["first", "second", "third"]
    run_pipeline(cfg, tmp_path)
    assert CALLS == ["first", "second", "third"]  # nothing re-ran


def test_config_change_reruns_that_stage_and_downstream(toy_stages, tmp_path):
    run_pipeline(pipeline_config_from_dict({}), tmp_path)
    CALLS.clear()
    run_pipeline(pipeline_config_from_dict({"second": {"value": 5}}), tmp_path)
    assert CALLS == ["second", "third"]
    assert (tmp_path / "second.out").read_text() == "5"


def test_killed_stage_resumes_without_redoing_earlier_ones(toy_stages, tmp_path):
    with pytest.raises(RuntimeError, match="second killed"):
        run_pipeline(pipeline_config_from_dict({"second": {"fail": True}}), tmp_path)
    assert CALLS == ["first", "second"]
    CALLS.clear()
    # the crashed stage left a partial file but no completion record, so it runs again; first is kept
    run_pipeline(pipeline_config_from_dict({}), tmp_path)
    assert CALLS == ["second", "third"]


def test_deleted_output_reruns_stage(toy_stages, tmp_path):
    cfg = pipeline_config_from_dict({})
    run_pipeline(cfg, tmp_path)
    (tmp_path / "third.out").unlink()
    CALLS.clear()
    run_pipeline(cfg, tmp_path)
    assert CALLS == ["third"]


def test_stage_needs_its_inputs(toy_stages, tmp_path):
    with pytest.raises(RuntimeError, match="needs stage 'first' first"):
        run_pipeline(pipeline_config_from_dict({}), tmp_path, stages=["second"])


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"frist": {}}, r"unknown section\(s\) \['frist'\]"),  # typo in a section name
        ({"first": {"valeu": 1}}, r"unknown option\(s\) \['valeu'\]; valid options are \['fail', 'value'\]"),
        ({"stages": ["first", "fourth"]}, r"unknown stage\(s\) \['fourth'\]"),
    ],
)
def test_config_errors_name_the_fix(toy_stages, raw, message):
    with pytest.raises(ValueError, match=message):
        pipeline_config_from_dict(raw)


def test_real_stages_resume_on_a_small_synthetic_catalog(tmp_path):
    """data -> embed -> quantize for real; a second run skips all three, a quantize change re-runs only it."""
    from genrec.artifacts import read_sids
    from genrec.pipeline import is_done

    raw = {"data": {"synthetic_items": 240, "synthetic_users": 60},
           "quantize": {"codebook_size": 8, "epochs": 4, "warmup_epochs": 1, "batch_size": 64}}
    cfg = pipeline_config_from_dict(raw)
    stages = ["data", "embed", "quantize"]
    run_pipeline(cfg, tmp_path, stages)
    sids = read_sids(tmp_path / "sids.json")
    from genrec.artifacts import Run

    assert len(sids) == len(Run(tmp_path).items())  # every item has a SID, unique by load_sids' own check
    mtime = (tmp_path / "item_emb.npy").stat().st_mtime_ns
    run_pipeline(cfg, tmp_path, stages)
    assert (tmp_path / "item_emb.npy").stat().st_mtime_ns == mtime
    raw["quantize"]["seed"] = 7
    cfg2 = pipeline_config_from_dict(raw)
    run_pipeline(cfg2, tmp_path, stages)
    assert (tmp_path / "item_emb.npy").stat().st_mtime_ns == mtime  # embed untouched
    from genrec.pipeline import fingerprints

    assert is_done(tmp_path, "quantize", fingerprints(cfg2)["quantize"])
    assert not is_done(tmp_path, "quantize", fingerprints(cfg)["quantize"])


def test_broken_yaml_names_file_and_line(tmp_path):
    from genrec.pipeline import load_pipeline_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  source: synthetic\n  seed: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad.yaml:\d+: not valid YAML"):
        load_pipeline_config(bad)
    bad.write_text("- data\n- embed\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        load_pipeline_config(bad)


def test_set_overrides_a_nested_value_and_changes_only_that_fingerprint(tmp_path):
    from genrec.pipeline import fingerprints, load_pipeline_config

    path = tmp_path / "p.yaml"
    path.write_text("data:\n  source: synthetic\n"
                    "sft:\n  config: configs/sft/demo.yaml\n  overrides: {num_train_epochs: 1}\n")
    base = load_pipeline_config(path)
    cfg = load_pipeline_config(path, ["sft.overrides.seed=7", "evaluate.beam=50"])
    assert cfg.config("sft").overrides == {"num_train_epochs": 1, "seed": 7}  # merged, YAML-typed
    assert cfg.config("evaluate").beam == 50
    before, after = fingerprints(base), fingerprints(cfg)
    assert [s for s in before if before[s] != after[s]] == ["sft", "grpo", "evaluate"]


@pytest.mark.parametrize(
    "item, message",
    [
        ("sft", r"write section.key=value"),
        ("evaluate.beem=5", r"unknown option\(s\) \['beem'\]"),
        ("data.source.x=1", r"'source' holds a value, not a mapping"),
        ("evaluate.beam=[1", r"not valid YAML"),
    ],
)
def test_bad_set_names_the_fix(tmp_path, item, message):
    from genrec.pipeline import load_pipeline_config

    path = tmp_path / "p.yaml"
    path.write_text("data:\n  source: synthetic\n")
    with pytest.raises(ValueError, match=message):
        load_pipeline_config(path, [item])


# ----------------------------------------------------------------------------- input files in the data fingerprint


def _generic_dataset(root: Path) -> Path:
    import json

    root.mkdir(parents=True, exist_ok=True)
    items = [{"item_id": i, "title": f"Item {i}"} for i in "abcdef"]
    (root / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    rows = [f"u{u},{i},{t}" for u in range(4) for t, i in enumerate("abcdef"[u:u + 4])]
    (root / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    return root


def test_edited_input_file_reruns_data_and_downstream(tmp_path):
    from genrec.pipeline import fingerprints, run_stage

    root = _generic_dataset(tmp_path / "ds")
    cfg = pipeline_config_from_dict({"data": {"source": "generic", "path": str(root)}})
    run_dir = tmp_path / "run"
    assert run_stage(cfg, run_dir, "data")
    assert not run_stage(cfg, run_dir, "data")  # unchanged input: skipped
    before = fingerprints(cfg, run_dir)
    # renaming an item re-runs the stage, and the new title reaches its output
    items = root / "items.jsonl"
    items.write_text(items.read_text().replace("Item b", "Item B"))
    after = fingerprints(cfg, run_dir)
    assert all(before[s] != after[s] for s in before)  # every stage downstream chains on data's fingerprint
    assert run_stage(cfg, run_dir, "data")
    assert '"Item B"' in (run_dir / "items.jsonl").read_text()
    # a row with an unknown item is read (and refused) instead of "up to date ... skipped"
    with open(root / "interactions.csv", "a") as f:
        f.write("u9,zzz,99\n")
    with pytest.raises(ValueError, match=r"interactions.csv:\d+: unknown item_id 'zzz'"):
        run_stage(cfg, run_dir, "data")


def test_touched_but_unchanged_input_still_skips(tmp_path):
    import os

    from genrec.pipeline import run_stage

    root = _generic_dataset(tmp_path / "ds")
    cfg = pipeline_config_from_dict({"data": {"source": "generic", "path": str(root)}})
    assert run_stage(cfg, tmp_path / "run", "data")
    os.utime(root / "interactions.csv", (1e9, 1e9))  # new mtime, same bytes: re-hashed, same content hash
    assert not run_stage(cfg, tmp_path / "run", "data")


def test_input_hashes_are_cached_by_size_and_mtime(tmp_path):
    from genrec.io import file_sha256, read_json
    from genrec.pipeline import fingerprints

    root = _generic_dataset(tmp_path / "ds")
    cfg = pipeline_config_from_dict({"data": {"source": "generic", "path": str(root)}})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fingerprints(cfg, run_dir)
    cache = read_json(run_dir / ".genrec" / "input_hashes.json")
    assert sorted(Path(p).name for p in cache) == ["interactions.csv", "items.jsonl"]
    # same size and mtime: the cached hash is trusted and the file is not read again
    path = str(root / "items.jsonl")
    cache[path]["sha256"] = "cached"
    assert file_sha256(path, cache) == "cached"
    cache[path]["mtime_ns"] -= 1  # changed: read and hashed again
    assert file_sha256(path, cache) not in ("cached", "missing")


def test_data_input_files_follow_the_layout(tmp_path):
    from genrec.data import DataConfig, input_files

    assert input_files(DataConfig(source="synthetic")) == []
    assert [p.name for p in input_files(DataConfig(source="generic", path=str(tmp_path)))] == [
        "items.jsonl", "interactions.csv"]
    root = tmp_path / "mini"
    for rel in ("index/Toy.item.json", "valid/Toy_5.csv", "test/Toy_5.csv",
                "recovered_partial/Toy.train_recovered_subset.csv"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    files = input_files(DataConfig(source="minionerec", path=str(root)))
    assert [str(p.relative_to(root)) for p in files] == [
        "index/Toy.item.json", "recovered_partial/Toy.train_recovered_subset.csv", "valid/Toy_5.csv", "test/Toy_5.csv"]
    (root / "train").mkdir()
    (root / "train" / "Toy_5.csv").write_text("")  # official train rows win under train_split: auto
    train = input_files(DataConfig(source="minionerec", path=str(root)))[1]
    assert str(train.relative_to(root)) == "train/Toy_5.csv"


def test_exported_fused_vectors_join_the_quantize_fingerprint(tmp_path):
    from genrec.pipeline import fingerprints

    text = pipeline_config_from_dict({"data": {"source": "synthetic"}})
    fused = pipeline_config_from_dict({"data": {"source": "synthetic"}, "quantize": {"input": "fused"}})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    missing = fingerprints(fused, run_dir)
    # text input reads nothing from outside the pipeline: its fingerprint is what it was before inputs existed
    assert fingerprints(text, run_dir)["quantize"] == fingerprints(text)["quantize"]
    # the baseline's export (or a new one) re-runs quantize and everything after it, nothing before
    (run_dir / "fused").mkdir()
    (run_dir / "fused" / "item_emb.npy").write_bytes(b"vectors")
    exported = fingerprints(fused, run_dir)
    assert [s for s in missing if missing[s] != exported[s]] == ["quantize", "describe", "sft", "grpo", "evaluate"]
    (run_dir / "fused" / "item_emb.npy").write_bytes(b"other vectors")
    assert fingerprints(fused, run_dir)["quantize"] != exported["quantize"]
