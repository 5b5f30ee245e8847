"""The raw sources, data.source amazon (2018 and 2023 releases) and recbole: the fixtures (tests/fixtures/README.md)
give the counts their options imply and the same rows in every format; plain and gzipped files read alike; every
bad line stops the stage with the file, the line and the fix, before anything is written; fuzzed files end in a
dataset or such an error, nothing else."""

import gzip
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_data_fuzz import FUZZ, check_outcome, encode, mixed

from genrec import cli
from genrec.data import DataConfig, input_files, interaction_dataset, load_dataset
from genrec.io import load_yaml, read_json, read_lines
from genrec.pipeline import fingerprinted_config, pipeline_config_from_dict, run_pipeline
from genrec.sources.amazon import load_amazon
from genrec.sources.raw import InteractionLog, RawOptions, k_core
from genrec.sources.recbole import load_recbole

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NAME = "Industrial_and_Scientific"
WINDOW = {"start": "2016-10-01", "end": "2018-11-01"}
# what each step removes from the fixtures, and what is left (tests/fixtures/README.md says why)
READ = {"interactions": 65, "users": 13, "items": 16}
REMOVED = {"duplicates": {"interactions": 1, "users": 0, "items": 0},
           "window": {"interactions": 5, "users": 1, "items": 2},
           "title": {"interactions": 7, "users": 1, "items": 4},
           "k_core": {"interactions": 8, "users": 2, "items": 2, "rounds": 4}}
KEPT = {"interactions": 44, "users": 9, "items": 8}
FORMATS = {"amazon2018": "amazon", "amazon2023": "amazon", "recbole": "recbole"}


def fixture_copy(tmp_path: Path, folder: str) -> Path:
    return Path(shutil.copytree(FIXTURES / folder, tmp_path / folder))


def load(folder: Path, source: str, **options):
    return load_dataset(DataConfig(source=source, path=str(folder), **{**WINDOW, "k_core": 3, **options}))


# ----------------------------------------------------------------------------- the fixtures


@pytest.mark.parametrize("folder", FORMATS)
def test_each_fixture_runs_through_the_data_stage_with_the_counts_its_options_imply(folder, tmp_path):
    cli.main(["pipeline", str(FIXTURES / f"{folder}.yaml"), "--stages", "data", "--run-dir", str(tmp_path),
              "--set", f"data.path={FIXTURES / folder}"])
    stats = read_json(tmp_path / "data_stats.json")
    assert (stats["raw"]["read"], stats["raw"]["removed"], stats["raw"]["kept"]) == (READ, REMOVED, KEPT)
    assert {k: stats[k] for k in ("items", "train_rows", "valid_rows", "test_rows", "duplicate_interactions",
                                  "users_too_short")} == {"items": 8, "train_rows": 28, "valid_rows": 3,
                                                          "test_rows": 4, "duplicate_interactions": 1,
                                                          "users_too_short": 0}
    assert stats["raw"].get("release") == {"amazon2018": "2018", "amazon2023": "2023"}.get(folder)


def test_the_three_formats_give_the_same_rows_and_catalog():
    datasets = {folder: load(FIXTURES / folder, source) for folder, source in FORMATS.items()}
    first = datasets["amazon2018"]
    for ds in datasets.values():
        assert ds.splits == first.splits
        assert [(it["item_id"], it["title"], it["brand"]) for it in ds.items] == [
            (it["item_id"], it["title"], it["brand"]) for it in first.items]
    gloves = first.items[0]
    assert gloves == {"item_id": "B000A1", "title": "Nitrile Exam Gloves, Powder-Free, 100 Count",
                      "description": "Latex-free nitrile gloves for lab work.", "brand": "SafeHands",
                      "categories": "Industrial & Scientific, Lab & Scientific Products"}  # HTML out, first entry wins
    assert datasets["amazon2018"].items[1]["description"] == "Heat-resistant beakers & graduated markings."
    users = {r["user_id"] for rows in first.splits.values() for r in rows}
    assert users == {f"A1CORE{n}" for n in range(1, 9)} | {"A2CHAINQ2"}


@pytest.mark.parametrize(
    "options, removed, kept",
    [
        # the window off: the 2015 user's three reviews survive; the items reviewed only outside it fall to the k-core
        ({"start": None, "end": None}, {"window": [0, 0, 0], "k_core": [10, 2, 4, 4]}, [47, 10, 8]),
        # the k-core off (0): every user and item that passed the title filter stays
        ({"k_core": 0}, {"k_core": [0, 0, 0, 0]}, [52, 11, 10]),
        # no title limit: the 25-word title passes, its two reviews fall to the k-core in round 1 instead
        ({"max_title_words": 0}, {"title": [5, 1, 3], "k_core": [10, 2, 3, 4]}, [44, 9, 8]),
        # MiniOneRec's 5-core: the whole chain goes in one round; the eight core users and items stay
        ({"k_core": 5}, {"k_core": [11, 3, 2, 1]}, [41, 8, 8]),
    ],
)
def test_each_option_removes_what_it_implies(options, removed, kept):
    raw = load(FIXTURES / "amazon2018", "amazon", **options).stats()["raw"]
    for step, counts in removed.items():
        assert list(raw["removed"][step].values()) == counts, step
    assert list(raw["kept"].values()) == kept


def test_gzipped_and_plain_files_read_alike(tmp_path):
    root = fixture_copy(tmp_path, "amazon2023")
    for path in list(root.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert load(root, "amazon").splits == load(FIXTURES / "amazon2023", "amazon").splits
    assert list(read_lines(root / f"{NAME}.jsonl.gz")) == list(read_lines(FIXTURES / "amazon2023" / f"{NAME}.jsonl"))


def test_k_core_iterates_until_every_user_and_item_has_k():
    # users 0-2 and items 0-2 form a 2-core; user 3's item 3 has one interaction, which leaves user 3 with one
    users, items = np.array([0, 0, 1, 1, 2, 2, 3, 3]), np.array([0, 1, 1, 2, 2, 0, 3, 0])
    keep, rounds = k_core(users, items, np.ones(8, bool), 2)
    assert keep.tolist() == [True] * 6 + [False, False] and rounds == 2


def test_interaction_log_keeps_ids_and_file_order():
    log = InteractionLog()
    for n, (user, item) in enumerate([("u", "b"), ("v", "a"), ("u", "a")], 1):
        log.add(user, item, float(n), n + 1)
    users, items, times, lines = log.arrays()
    assert log.ids() == (["u", "v"], ["b", "a"]) and users.tolist() == [0, 1, 0] and items.tolist() == [0, 1, 1]
    assert times.tolist() == [1.0, 2.0, 3.0] and lines.tolist() == [2, 3, 4]


# ----------------------------------------------------------------------------- bad input


def _amend(path: Path, line: str, replace: int | None = None) -> None:
    """Append `line` to a file, or put it in place of line number `replace`."""
    lines = path.read_text().splitlines()
    if replace is None:
        lines.append(line)
    else:
        lines[replace - 1] = line
    path.write_text("\n".join(lines) + "\n")


REVIEW = {"rating": 5.0, "parent_asin": "B000A1", "user_id": "AX", "timestamp": 1500000000000}


@pytest.mark.parametrize(
    "file, line, replace, message",
    [
        # neither JSON nor a Python literal: the physical line and the fix
        ("reviews", "{'rating': 5.0,", None, rf"{NAME}.jsonl:66: neither JSON nor a Python dict literal; fix"),
        # a review of neither release, first line: what each release needs, and the option that settles it
        ("reviews", json.dumps({"user": "u", "item": "i", "time": 1}), 1,
         r"jsonl:1: this review fits neither the 2018 release \(reviewerID, asin, unixReviewTime\) nor the 2023"),
        # a 2018 line among 2023 lines
        ("reviews", json.dumps({"reviewerID": "u", "asin": "B000A1", "unixReviewTime": 1500000000}), None,
         r"jsonl:66: a 2023 line needs user_id as a non-empty string \(it has \['asin', 'reviewerID'"),
        # an empty user id
        ("reviews", json.dumps({**REVIEW, "user_id": " "}), None, r"jsonl:66: a 2023 line needs user_id as a non-"),
        # a time that is text
        ("reviews", json.dumps({**REVIEW, "timestamp": "yesterday"}), None,
         r"jsonl:66: timestamp must be a number, got a string 'yesterday'"),
        # microseconds (or a corrupted field): out of range for milliseconds
        ("reviews", json.dumps({**REVIEW, "timestamp": 1500000000000000}), None,
         r"jsonl:66: timestamp=1500000000000000 is out of range for unix milliseconds \(2023 release\)"),
        # a title that is not text
        ("meta", json.dumps({"parent_asin": "B000X", "title": 42}), None,
         rf"meta_{NAME}.jsonl:17: title must be a string, got an integer 42"),
        # a meta line without the release's item id
        ("meta", json.dumps({"asin": "B000X", "title": "Gloves"}), None, r"jsonl:17: a 2023 line needs parent_asin"),
        # one object per line
        ("meta", "[1, 2]", None, r"jsonl:17: expected one object per line, got a list"),
    ],
)
def test_amazon_bad_lines_name_file_line_and_fix(tmp_path, file, line, replace, message):
    root = fixture_copy(tmp_path, "amazon2023")
    _amend(root / (f"{NAME}.jsonl" if file == "reviews" else f"meta_{NAME}.jsonl"), line, replace)
    with pytest.raises(ValueError, match=message):
        load(root, "amazon")


def test_the_release_option_is_checked_against_the_files(tmp_path):
    with pytest.raises(ValueError, match=r"jsonl:1: a 2018 line needs reviewerID .* or check data.release"):
        load(FIXTURES / "amazon2023", "amazon", release="2018")


@pytest.mark.parametrize(
    "change, error, message",
    [
        # a second reviews file: which one is meant is not guessed
        (lambda root: (root / f"{NAME}.jsonl.gz").write_bytes(b""), FileNotFoundError,
         r"expected one reviews file of 'Industrial_and_Scientific' .* found \['Industrial_and_Scientific.jsonl'"),
        # no meta file
        (lambda root: (root / f"meta_{NAME}.jsonl").unlink(), FileNotFoundError, r"holds no meta_<category>.jsonl"),
        # a second category and no data.name
        (lambda root: (root / "meta_Toys.jsonl").write_text("{}\n"), ValueError,
         r"holds meta files of 2 categories \(\['Industrial_and_Scientific', 'Toys'\]\); set data.name"),
        # a gzip file cut short (a download that stopped)
        (lambda root: (root / f"{NAME}.jsonl").write_bytes(gzip.compress((root / f"{NAME}.jsonl").read_bytes())[:900]),
         ValueError, rf"{NAME}.jsonl:\d+: the gzip stream is damaged or cut short .*download or compress the file"),
    ],
)
def test_amazon_file_problems(tmp_path, change, error, message):
    root = fixture_copy(tmp_path, "amazon2023")
    change(root)
    with pytest.raises(error, match=message):
        load(root, "amazon")


INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


@pytest.mark.parametrize(
    "file, line, replace, message",
    [
        # a header without types is not a RecBole header
        ("inter", "user_id\titem_id\ttimestamp", 1, r"inter:1: header column 'user_id' is not name:type"),
        # no timestamp column: rows could not be ordered
        ("inter", "user_id:token\titem_id:token\trating:float", 1,
         r"inter:1: the header lacks timestamp \(it has .*\); this RecBole file needs user_id, item_id, timestamp"),
        # a field short
        ("inter", "AX\tB000A1\t1500000000", None, r"inter:67: expected 4 tab-separated fields \(header: .*got 3"),
        # a time that is neither unix seconds nor an ISO date
        ("inter", "AX\tB000A1\t5.0\tsoon", None, r"inter:67: timestamp 'soon' is neither unix seconds nor an ISO"),
        # milliseconds: the hint says so
        ("inter", "AX\tB000A1\t5.0\t1500000000000", None, r"inter:67: .*out of range.*looks like milliseconds"),
        ("inter", " \tB000A1\t5.0\t1500000000", None, r"inter:67: empty user_id; every line needs one"),
        # the same item twice in the item file
        ("item", "B000A1\tGloves again\tX\tY\tZ", None, r"item:18: item_id 'B000A1' again \(first on line 2\)"),
        # no title column at all
        ("item", "item_id:token\tname:token_seq\tbrand:token\tcategories:token_seq\tdescription:token_seq", 1,
         r"item:1: the header lacks title or movie_title"),
    ],
)
def test_recbole_bad_lines_name_file_line_and_fix(tmp_path, file, line, replace, message):
    root = fixture_copy(tmp_path, "recbole")
    _amend(root / f"{NAME}.{file}", line, replace)
    with pytest.raises(ValueError, match=message):
        load(root, "recbole")


def test_recbole_needs_its_item_file_and_takes_movielens_columns(tmp_path):
    root = fixture_copy(tmp_path, "recbole")
    (root / f"{NAME}.item").unlink()
    with pytest.raises(FileNotFoundError, match=r"\.item does not exist; it is an input of data.source=recbole"):
        load(root, "recbole")
    (root / f"{NAME}.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
                                       + "".join(f"B000{c}{n}\tFilm {c}\t1995\tDrama\n"
                                                 for c, n in zip("ABCDEFGH", range(1, 9))))
    ds = load(root, "recbole")
    assert ds.items[0] == {"item_id": "B000A1", "title": "Film A", "description": "", "brand": "",
                           "categories": "Drama", "release_year": "1995"}


def test_a_bad_line_stops_the_stage_before_anything_is_written(tmp_path):
    root = fixture_copy(tmp_path, "amazon2018")
    _amend(root / f"meta_{NAME}.json", '{"asin": "B000X", "title": ["Gloves"]}')
    cfg = pipeline_config_from_dict({"data": {"source": "amazon", "path": str(root), **WINDOW, "k_core": 3}})
    with pytest.raises(ValueError, match=rf"meta_{NAME}.json:18: title must be a string, got a list"):
        run_pipeline(cfg, tmp_path / "run", ["data"])
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- config and fingerprints


@pytest.mark.parametrize(
    "options, message",
    [
        ({"source": "generic", "k_core": 3}, r"data.k_core applies to data.source amazon or recbole only, not 'gen"),
        ({"source": "recbole", "release": "2018"}, r"data.release applies to data.source amazon only"),
        ({"source": "amazon", "release": "2019"}, r"data.release='2019': use 'auto', '2018', '2023'"),
        ({"source": "amazon", "start": "2016-13-01"}, r"data.start='2016-13-01': write a date as YYYY-MM-DD"),
        ({"source": "amazon", "start": "2018-01-01", "end": "2017-01-01"}, r"is after data.end='2017-01-01'; swap"),
        ({"source": "amazon", "k_core": -1}, r"data.k_core=-1, data.max_title_words=20: must be >= 0"),
    ],
)
def test_raw_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(path="x", **options)


def test_an_unquoted_date_in_a_config_is_the_date_text():
    cfg = pipeline_config_from_dict(load_yaml("data: {source: amazon, path: x, start: 2016-10-01, end: 2018-11-01}"))
    assert (cfg.config("data").start, cfg.config("data").end) == ("2016-10-01", "2018-11-01")


def test_an_unquoted_release_gets_a_hint_to_quote_it():
    with pytest.raises(ValueError, match=r'data.release=2023: expected str, got an integer \(YAML reads an unquoted '
                                         r'2023 as a number: quote it, release: "2023"\)'):
        pipeline_config_from_dict(load_yaml("data: {source: amazon, path: x, release: 2023}"))


@pytest.mark.parametrize(
    "data, message",
    [
        # a stray Latin-1 byte on line 2 of a gzipped file: the line inside the stream
        (gzip.compress(b'{"a": 1}\n{"b": "caf\xe9"}\n'), r"reviews.jsonl:2: not UTF-8 text \(byte 0xe9\); save it as"),
        # UTF-16 (a spreadsheet export): said at once
        ("x\n".encode("utf-16"), r"reviews.jsonl: not UTF-8 text \(UTF-16, by its byte-order mark\)"),
    ],
)
def test_read_lines_names_the_line_of_a_decoding_problem(tmp_path, data, message):
    (tmp_path / "reviews.jsonl").write_bytes(data)
    with pytest.raises(ValueError, match=message):
        list(read_lines(tmp_path / "reviews.jsonl"))


def test_raw_options_join_the_fingerprint_only_when_set_so_existing_runs_keep_theirs():
    before_this_option = {"source", "path", "name", "train_split", "max_history", "synthetic_items",
                          "synthetic_users", "seed"}
    assert set(fingerprinted_config(DataConfig())) == before_this_option
    set_here = fingerprinted_config(DataConfig(source="amazon", path="x", k_core=3))
    assert set(set_here) == before_this_option | {"k_core"}


def test_input_files_are_the_sources_own(tmp_path):
    assert input_files(DataConfig(source="amazon", path=str(FIXTURES / "amazon2018"))) == [
        FIXTURES / "amazon2018" / f"{NAME}.json.gz", FIXTURES / "amazon2018" / f"meta_{NAME}.json"]
    assert input_files(DataConfig(source="recbole", path=str(FIXTURES / "recbole"))) == [
        FIXTURES / "recbole" / f"{NAME}.inter", FIXTURES / "recbole" / f"{NAME}.item"]


# ----------------------------------------------------------------------------- fuzzing


def _raw_dataset(load_raw):
    raw = load_raw()
    return interaction_dataset(raw.items, (("", x) for x in raw.interactions), 10, "fuzz")


GOOD_REVIEW = st.builds(lambda u, i, t: json.dumps({"user_id": u, "parent_asin": i, "timestamp": t, "rating": 5}),
                        st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(["a", "b", "c"]),
                        st.integers(1_400_000_000_000, 1_500_000_000_000))
ODD = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**20), st.floats(), st.text(max_size=4),
                st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
BAD_REVIEW = st.one_of(
    st.builds(lambda key, value: json.dumps({**json.loads(
        '{"user_id": "u1", "parent_asin": "a", "timestamp": 1450000000000}'), key: value}),
        st.sampled_from(["user_id", "parent_asin", "timestamp"]), ODD),
    st.sampled_from(["{", "[1]", "null", "{'user_id': 'u1'}", "{1: 2}", '{"reviewerID": "u", "asin": "a"}', "\ufeff"]),
    st.text(max_size=8))
GOOD_META = st.builds(lambda i, t: json.dumps({"parent_asin": i, "title": t, "description": ["<b>x</b>"],
                                               "store": "S", "categories": ["C"]}),
                      st.sampled_from(["a", "b", "c"]), st.sampled_from(["Gloves", "Safety glasses", "x", ""]))
BAD_META = st.one_of(st.builds(lambda key, value: json.dumps({"parent_asin": "a", "title": "T", key: value}),
                               st.sampled_from(["parent_asin", "title", "description", "store", "categories"]), ODD),
                     st.sampled_from(["{", "[]", "{'parent_asin': 'a', 'title': 'T'}", '{"title": "\\ud800x"}']))


@FUZZ
@given(reviews=mixed(GOOD_REVIEW, BAD_REVIEW, max_size=10), meta=mixed(GOOD_META, BAD_META, max_size=5),
       gzipped=st.booleans(), k=st.integers(0, 2))
def test_amazon_loader_fuzz(reviews, meta, gzipped, k):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = {root / f"{NAME}.jsonl": encode("\n".join(reviews) + "\n", "utf-8", b""),
                 root / f"meta_{NAME}.jsonl": encode("\n".join(meta) + "\n", "utf-8", b"")}
        for path, data in files.items():  # a gzipped file keeps its plain name: gzip is told by the first bytes
            path.write_bytes(gzip.compress(data) if gzipped and path.name.startswith(NAME) else data)
        check_outcome(lambda: _raw_dataset(lambda: load_amazon(root, None, "auto", RawOptions(k_core=k))), files)


GOOD_INTER = st.builds(lambda u, i, t: f"{u}\t{i}\t{t}", st.sampled_from(["u1", "u2", "u3"]),
                       st.sampled_from(["a", "b", "c"]), st.integers(1_400_000_000, 1_500_000_000))
BAD_INTER = st.one_of(st.lists(st.sampled_from(["u1", "a", "", " ", "1e20", "nan", "x", "2018-01-01", "\t"]),
                               max_size=4).map("\t".join), st.text(max_size=6))


@FUZZ
@given(inter=mixed(GOOD_INTER, BAD_INTER, max_size=10),
       header=st.sampled_from(["user_id:token\titem_id:token\ttimestamp:float"] * 6
                              + ["user_id\titem_id\ttimestamp", "user_id:token\titem_id:token", ""]),
       titles=st.lists(st.sampled_from(["Gloves", "", "x", "A b c"]), min_size=3, max_size=3),
       k=st.integers(0, 2))
def test_recbole_loader_fuzz(inter, header, titles, k):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = {root / "t.inter": ("\n".join([header, *inter]) + "\n").encode(),
                 root / "t.item": ("item_id:token\ttitle:token_seq\n" + "".join(
                     f"{i}\t{t}\n" for i, t in zip("abc", titles))).encode()}
        for path, data in files.items():
            path.write_bytes(data)
        check_outcome(lambda: _raw_dataset(lambda: load_recbole(root, None, RawOptions(k_core=k))), files)


@pytest.mark.slow
def test_every_stage_runs_on_the_amazon_fixture_and_the_model_explains(tmp_path, capsys):
    """tests/fixtures/amazon2018-e2e.yaml end to end (about 20 s): raw files in, explained recommendations out."""
    from genrec.client import main as recommend

    cli.main(["pipeline", str(FIXTURES / "amazon2018-e2e.yaml"), "--run-dir", str(tmp_path),
              "--set", f"data.path={FIXTURES / 'amazon2018'}"])
    assert read_json(tmp_path / "eval" / "test" / "metrics.json")["rows"] == 4
    answer = recommend(["--checkpoint", str(tmp_path / "checkpoints" / "grpo"), "--history", "B000A1", "B000D4",
                        "--k", "3", "--beam", "8", "--explain", "--device", "cpu"])
    assert answer["returned"] == 3 and "explanation_note" not in answer
    assert all("explanation" in item for item in answer["items"]) and "why:" in capsys.readouterr().out
