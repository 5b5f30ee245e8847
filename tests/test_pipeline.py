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
    from genrec.pipeline import is_done
    from genrec.sid import load_sids

    raw = {"data": {"synthetic_items": 240, "synthetic_users": 60},
           "quantize": {"codebook_size": 8, "epochs": 4, "warmup_epochs": 1, "batch_size": 64}}
    cfg = pipeline_config_from_dict(raw)
    stages = ["data", "embed", "quantize"]
    run_pipeline(cfg, tmp_path, stages)
    sids = load_sids(tmp_path / "sids.json")
    from genrec.data import read_items

    assert len(sids) == len(read_items(tmp_path))  # every item has a SID, unique by load_sids' own check
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
    path.write_text("data:\n  source: synthetic\nsft:\n  config: configs/sft/demo.yaml\n  overrides: {num_train_epochs: 1}\n")
    base = load_pipeline_config(path)
    cfg = load_pipeline_config(path, ["sft.overrides.seed=7", "evaluate.beam=50"])
    assert cfg.config("sft").overrides == {"num_train_epochs": 1, "seed": 7}  # merged, YAML-typed
    assert cfg.config("evaluate").beam == 50
    before, after = fingerprints(base), fingerprints(cfg)
    assert [s for s in before if before[s] != after[s]] == ["sft", "evaluate"]


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
