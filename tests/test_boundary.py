"""What the data and config boundary refuses, and how it says so: every bad input is one ValueError or
FileNotFoundError naming the file and line (or the config section and key) and the fix, never a traceback from
deep inside, and nothing is accepted that the stages cannot use."""

import json
import os
import time
from pathlib import Path

import pytest

from genrec import cli, pipeline
from genrec.config import _matches
from genrec.data import DataConfig, load_dataset, load_generic, load_minionerec
from genrec.io import read_text, remove_stale_temp_files
from genrec.pipeline import (
    Stage,
    load_pipeline_config,
    parse_stage_list,
    pipeline_config_from_dict,
    run_pipeline,
)

HEADER = "user_id,item_id,timestamp\n"
ITEMS = [{"item_id": i, "title": f"Item {i}"} for i in "abc"]


def write_generic(root: Path, items, interactions: str | bytes = HEADER) -> Path:
    """items: a list of records (one JSON line each) or the raw text of items.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    text = items if isinstance(items, str) else "".join(json.dumps(it) + "\n" for it in items)
    (root / "items.jsonl").write_text(text, encoding="utf-8")
    data = interactions.encode("utf-8") if isinstance(interactions, str) else interactions
    (root / "interactions.csv").write_bytes(data)
    return root


# ----------------------------------------------------------------------------- item records


@pytest.mark.parametrize(
    "record, message",
    [
        # null would become an item called "None" that interactions could match
        ({"item_id": None, "title": "x"}, r"items.jsonl:1: item_id must be a string or an integer, got null"),
        # bool is not an int here (True would become the id "True")
        ({"item_id": True, "title": "x"}, r"item_id must be a string or an integer, got a boolean"),
        # a float id has no single spelling (1.0 vs 1)
        ({"item_id": 1.5, "title": "x"}, r"item_id must be a string or an integer, got a number"),
        # an object title would be stringified into "{'en': 'Hammer'}"
        ({"item_id": "a", "title": {"en": "Hammer"}}, r"items.jsonl:1: title must be a string, got an object"),
        # a boolean title would become "False"
        ({"item_id": "a", "title": False}, r"title must be a string, got a boolean"),
        # a list title: lists are for description and categories only
        ({"item_id": "a", "title": ["Hammer"]}, r"title must be a string, got a list"),
        # a number as title is refused with the fix (quote it), rather than guessed
        ({"item_id": "a", "title": 1984}, r'title must be a string, got an integer 1984; quote it \("title": "1984"'),
        # no title at all
        ({"item_id": "a"}, r"item 'a' has an empty title"),
        # description: a string or a list of strings, nothing else
        ({"item_id": "a", "title": "x", "description": {"k": 1}}, r"description must be a string or a list of str"),
        ({"item_id": "a", "title": "x", "categories": [1, 2]}, r"categories must be a string or a list of strings"),
        # brand is plain text
        ({"item_id": "a", "title": "x", "brand": 3}, r"brand must be a string, got an integer 3"),
        # a JSON escape for a lone surrogate cannot be written back as UTF-8
        ({"item_id": "a", "title": "x\ud800"}, r"lone surrogate"),
    ],
)
def test_generic_item_types(tmp_path, record, message):
    with pytest.raises(ValueError, match=message):
        load_generic(write_generic(tmp_path, [record], HEADER + "u,a,1\n"))


def test_generic_item_forms_that_stay_accepted(tmp_path):
    items = [
        {"item_id": 7, "title": "Seven", "description": ["one", "two"]},  # int id -> "7"; list of strings joined
        {"item_id": "b", "title": " ['Pack', 'of 2'] ", "categories": "['Tools', 'Hand Tools']"},  # title verbatim
        {"item_id": "c", "title": "C", "brand": None, "color": "red"},  # null text is empty; extra fields kept
    ]
    ds = load_generic(write_generic(tmp_path, items, HEADER + "u,7,1\nu,b,2\nu,c,3\n"))
    by_id = {it["item_id"]: it for it in ds.items}
    assert by_id["7"]["description"] == "one two"
    assert by_id["b"]["title"] == "['Pack', 'of 2']" and by_id["b"]["categories"] == "Tools Hand Tools"
    assert by_id["c"]["brand"] == "" and by_id["c"]["color"] == "red"
    assert ds.splits["test"][0]["history"] == ["7", "b"]


def test_items_blank_lines_keep_physical_line_numbers(tmp_path):
    text = "\n" + json.dumps(ITEMS[0]) + "\n\n\n" + json.dumps({"item_id": "a", "title": "again"}) + "\n"
    with pytest.raises(ValueError, match=r"items.jsonl:5: duplicate item_id 'a' \(first seen on line 2\)"):
        load_generic(write_generic(tmp_path, text))


# ----------------------------------------------------------------------------- interaction rows


@pytest.mark.parametrize(
    "rows, message",
    [
        # NaN, inf and negative times have no place on the timeline
        ("u,a,nan\n", r"interactions.csv:2: timestamp 'nan' is out of range: use unix seconds from 0 \(1970-01-01\)"),
        ("u,a,inf\n", r"interactions.csv:2: timestamp 'inf' is out of range"),
        ("u,a,-5\n", r"interactions.csv:2: timestamp '-5' is out of range"),
        # beyond 2100-01-01: refused, and unix milliseconds are recognised as such
        ("u,a,4102444801\n", r"timestamp '4102444801' is out of range: .* to 4102444800 \(2100-01-01\)"),
        ("u,a,1700000000000\n", r"out of range.*milliseconds: divide by 1000"),
        ("u,a,2150-01-01\n", r"timestamp '2150-01-01' is out of range"),
        # too few / too many fields say so (not "timestamp 'None'")
        ("u,a\n", r"interactions.csv:2: expected 3 fields, got 2"),
        ("u,a,1,9\n", r"interactions.csv:2: expected 3 fields, got 4"),
        # a blank line is skipped, and the next row keeps its physical line number
        ("u,a,1\n\nu,zzz,2\n", r"interactions.csv:4: unknown item_id 'zzz'"),
        # a row without a user
        (" ,a,1\n", r"interactions.csv:2: empty user_id"),
    ],
)
def test_generic_interaction_rows(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        load_generic(write_generic(tmp_path, ITEMS, HEADER + rows))


def test_timestamp_limits_are_inclusive(tmp_path):
    ds = load_generic(write_generic(tmp_path, ITEMS, HEADER + "u,a,0\nu,b,4102444800\nu,c,2099-12-31T00:00:00Z\n"))
    assert [r["target"] for s in ("train", "valid", "test") for r in ds.splits[s]] == ["c", "b"]


# ----------------------------------------------------------------------------- encodings


def test_utf8_bom_just_works(tmp_path):
    rows = HEADER + "u,a,1\nu,b,2\n"
    root = write_generic(tmp_path, ITEMS, rows.encode("utf-8-sig"))
    (root / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in ITEMS), encoding="utf-8-sig")
    assert load_generic(root).stats()["test_rows"] == 1


@pytest.mark.parametrize(
    "data, message",
    [
        # UTF-16 with a byte-order mark (what Excel's "Unicode text" writes)
        ((HEADER + "u,a,1\n").encode("utf-16"), r"interactions.csv: not UTF-8 text \(UTF-16.*save it as UTF-8"),
        # UTF-16 without a mark decodes as UTF-8 with NULs between the letters
        ((HEADER + "u,a,1\n").encode("utf-16-le"), r"interactions.csv:1: not UTF-8 text \(NUL bytes"),
        # Latin-1 bytes on line 3
        ((HEADER + "u,a,1\nJosé,b,2\n").encode("latin-1"), r"interactions.csv:3: not UTF-8 text \(byte 0xe9\)"),
    ],
)
def test_undecodable_file_names_file_and_fix(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        load_generic(write_generic(tmp_path, ITEMS, data))


# ----------------------------------------------------------------------------- paths


def test_input_path_problems(tmp_path):
    root = write_generic(tmp_path / "ds", ITEMS, HEADER + "u,a,1\nu,b,2\n")
    (root / "interactions.csv").unlink()
    # a missing user input points at data.path, not at a stage that would write it
    with pytest.raises(FileNotFoundError, match=r"interactions.csv does not exist; it is an input of the generic "
                                                r"layout: check data.path") as err:
        load_generic(root)
    assert "run the stage" not in str(err.value)
    (root / "interactions.csv").mkdir()
    with pytest.raises(ValueError, match=r"interactions.csv: is a directory, not a file"):
        load_generic(root)
    with pytest.raises(ValueError, match=r"data.path=.*items.jsonl is a file; point it at the generic dataset folder"):
        load_generic(root / "items.jsonl")
    with pytest.raises(FileNotFoundError, match=r"data.path=.*nowhere does not exist"):
        load_generic(tmp_path / "nowhere")


def test_unreadable_file(tmp_path, monkeypatch):
    root = write_generic(tmp_path, ITEMS, HEADER + "u,a,1\n")
    if os.geteuid() != 0:  # root reads through chmod 000
        (root / "items.jsonl").chmod(0)
        with pytest.raises(ValueError, match=r"items.jsonl: permission denied"):
            load_generic(root)
        (root / "items.jsonl").chmod(0o644)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ValueError, match=r"items.jsonl: permission denied; make it readable"):
        load_generic(root)


def test_stage_output_missing_keeps_the_stage_advice(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"items.jsonl does not exist; run the stage that writes it first"):
        read_text(tmp_path / "items.jsonl")


# ----------------------------------------------------------------------------- MiniOneRec layout


def write_minionerec(root: Path, catalog: str, csv_text: str, valid: str | None = None) -> Path:
    (root / "index").mkdir(parents=True)
    (root / "index" / "Toy.item.json").write_text(catalog)
    for split in ("valid", "test"):
        (root / split).mkdir()
        (root / split / "Toy_5.csv").write_text(valid if split == "valid" and valid is not None else csv_text)
    (root / "recovered_partial").mkdir()
    (root / "recovered_partial" / "Toy.train_recovered_subset.csv").write_text(csv_text)
    return root


CATALOG = json.dumps({"0": {"title": "A"}, "1": {"title": "B"}})
MHEADER = "user_id,history_item_id,item_id\n"


@pytest.mark.parametrize(
    "catalog, rows, message",
    [
        # a list instead of a mapping: a clear ValueError, not AttributeError on .items()
        ('[{"title": "A"}]', "", r"Toy.item.json: expected one JSON object mapping item id -> item .*, got a list"),
        # an item that is not an object
        ('{"0": "A"}', "", r"item '0': item '0' must be an object with a title, got a string"),
        # a title that is not text
        ('{"0": {"title": {"en": "A"}}}', "", r"item '0': title must be a string, got an object"),
        # broken JSON names the line
        ('{"0": {"title": "A"},\n "1": }', "", r"Toy.item.json:2: not valid JSON"),
        # rows with a field too few
        (CATALOG, 'A1,"[0]"\n', r"\.csv:2: expected 3 fields, got 2"),
        # history entries must be item ids, not floats or booleans
        (CATALOG, 'A1,"[0.0]",1\n', r"\.csv:2: history_item_id '\[0.0\]' must list item ids"),
        (CATALOG, 'A1,"[True]",1\n', r"must list item ids"),
        # deep nesting or an absurd literal is a bad row, not a RecursionError
        (CATALOG, 'A1,"' + "[" * 2000 + '",1\n', r"\.csv:2: history_item_id .* is not a list"),
    ],
)
def test_minionerec_boundary(tmp_path, catalog, rows, message):
    with pytest.raises(ValueError, match=message):
        load_minionerec(write_minionerec(tmp_path, catalog, MHEADER + rows))


# ----------------------------------------------------------------------------- empty splits


def test_generic_empty_split_fails_in_the_data_stage(tmp_path):
    # 5 rows cut 8:1:1 by row count: 4 / 0 / 1
    rows = "u1,a,1\nu1,b,2\nu1,c,3\nu2,a,4\nu2,b,5\nu2,c,6\nu3,a,7\n"
    root = write_generic(tmp_path / "ds", ITEMS, HEADER + rows)
    message = r"valid split came out empty \(4 rows in all: train 3, valid 0, test 1\); the 8:1:1 cut .* 10 rows"
    with pytest.raises(ValueError, match=message):
        load_dataset(DataConfig(source="generic", path=str(root)))


def test_minionerec_empty_split_fails_and_nothing_is_recorded(tmp_path):
    root = write_minionerec(tmp_path / "ds", CATALOG, MHEADER + 'A1,"[0]",1\n', valid=MHEADER)
    cfg = pipeline_config_from_dict({"data": {"source": "minionerec", "path": str(root)}})
    run_dir = tmp_path / "run"
    message = r"valid split came out empty \(2 rows in all: train 1, valid 0, test 1\); that split's CSV has no rows"
    with pytest.raises(ValueError, match=message):
        run_pipeline(cfg, run_dir, ["data"])
    assert not run_dir.exists()  # the run created it and wrote nothing: removed again


# ----------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    "value, annotation, ok",
    [
        (3, int, True),
        (True, int, False),  # bool is not an int here
        ("3", int, False),  # a quoted YAML number is not coerced
        (2.5, int, False),
        (3, float, True),  # an int is fine where a float is expected
        (False, float, False),
        (None, int | None, True),
        ("x", int | None, False),
        ([1, 2], list[int], True),
        ([1, "x"], list[int], False),
        ({"a": 1}, dict, True),
        ({"a": 1.0}, dict[str, float], True),
        ({1: 1.0}, dict[str, float], False),
        ("sid", str, True),
        (1, bool | None, False),
    ],
)
def test_type_matching(value, annotation, ok):
    assert _matches(value, annotation) is ok


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"data": {"synthetic_items": "many"}},
         r"section 'data': data.synthetic_items='many': expected int, got a string"),
        ({"data": {"max_history": "3"}}, r"data.max_history='3': expected int, got a string"),
        ({"data": {"max_history": True}}, r"data.max_history=True: expected int, got a boolean"),
        # a scalar or a list where a section's mapping belongs
        ({"data": "generic"}, r"section 'data': expected a mapping of option: value, got a string 'generic'"),
        ({"data": [1, 2]}, r"section 'data': expected a mapping of option: value, got a list \[1, 2\]"),
        ({"evaluate": {"bf16": "yes"}}, r"evaluate.bf16='yes': expected bool \| None, got a string"),
        ({"quantize": {"hidden_dims": [64, "x"]}}, r"quantize.hidden_dims=\[64, 'x'\]: expected list\[int\]"),
        ({"sft": {"overrides": [1]}}, r"sft.overrides=\[1\]: expected dict, got a list"),
        # `stages: data` was split into ['d', 'a', 't', 'a']
        ({"stages": "data"}, r"stages must be a list such as \[data, embed\], got a string 'data'"),
        ({"stages": []}, r"no stages to run"),
        ({"stages": [["data"]]}, r"unknown stage\(s\) \[\['data'\]\]"),  # a nested list is not a stage name
    ],
)
def test_config_types_are_checked_when_a_section_is_built(raw, message):
    with pytest.raises(ValueError, match=message):
        pipeline_config_from_dict(raw)


@pytest.mark.parametrize(
    "value, got", [("abc", r"'abc': expected int, got a string"), ("2.5", r"2.5: expected int, got a number")]
)
def test_set_with_a_wrong_type_fails_before_any_data_is_read(tmp_path, value, got):
    path = tmp_path / "p.yaml"
    path.write_text(f"data:\n  source: generic\n  path: {tmp_path / 'nowhere'}\n")
    with pytest.raises(ValueError, match=rf"section 'data': data.max_history={got}"):
        load_pipeline_config(path, [f"data.max_history={value}"])


def test_int_where_float_is_expected_is_accepted():
    assert pipeline_config_from_dict({"describe": {"detail_weight": 1}}).config("describe").detail_weight == 1


@pytest.mark.parametrize("text", ["", " ", "data,,embed", ","])
def test_empty_stage_list_is_refused(text):
    with pytest.raises(ValueError, match=r"--stages .*: name the stages to run"):
        parse_stage_list(text)


def test_cli_empty_stages_runs_nothing(tmp_path, caplog):
    path = tmp_path / "p.yaml"
    path.write_text("data:\n  source: synthetic\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["pipeline", str(path), "--run-dir", str(tmp_path / "run"), "--stages", ""])
    assert exit_.value.code == 2 and "name the stages to run" in caplog.text
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- run directories


@pytest.fixture
def toy_stage(monkeypatch):
    def run(run_dir: Path, cfg: DataConfig) -> None:
        (run_dir / "toy.out").write_text("done")

    monkeypatch.setattr(pipeline, "STAGES", {"toy": Stage("toy", DataConfig, run, ("toy.out",))})


def test_run_dir_that_is_a_file(tmp_path, toy_stage):
    run_dir = tmp_path / "run"
    run_dir.write_text("not a folder")
    with pytest.raises(ValueError, match=r"run directory .*run is a file; pass --run-dir a folder"):
        run_pipeline(pipeline_config_from_dict({}), run_dir)
    with pytest.raises(ValueError, match=r"cannot create it"):  # a file where a parent folder should be
        run_pipeline(pipeline_config_from_dict({}), run_dir / "sub")


def test_failed_run_leaves_no_empty_run_dir(tmp_path):
    cfg = pipeline_config_from_dict({"data": {"source": "generic", "path": str(tmp_path / "nowhere")}})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_pipeline(cfg, tmp_path / "runs" / "new", ["data"])
    assert not (tmp_path / "runs" / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(FileNotFoundError):
        run_pipeline(cfg, kept, ["data"])
    assert kept.is_dir()  # it was there before the run: not ours to remove


def test_stale_temp_files_are_removed_when_a_stage_starts(tmp_path, toy_stage):
    old = time.time() - 2 * 3600
    stale = tmp_path / "splits" / ".train.jsonl.ab12cd_9.tmp"  # atomic_path's naming, left by a killed write
    fresh = tmp_path / ".items.jsonl.zz99yy88.tmp"  # a write that may still be running
    mine = tmp_path / ".notes.tmp"  # not atomic_path's pattern
    for path in (stale, fresh, mine):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
    for path in (stale, mine):
        os.utime(path, (old, old))
    run_pipeline(pipeline_config_from_dict({}), tmp_path)
    assert not stale.exists() and fresh.exists() and mine.exists()
    assert remove_stale_temp_files(tmp_path, max_age_s=-1) == [fresh]
