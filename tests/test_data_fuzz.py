"""Property-based fuzzing of both dataset loaders (hypothesis): whatever the files hold (malformed rows, wrong
JSON types, odd quoting, other encodings, stray bytes), the outcome is either a dataset the stages can use or a
ValueError naming the file, and the physical line for a record problem. Any other exception type fails the test."""

import csv
import io
import json
import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.data import SPLITS, load_generic, load_minionerec, parse_timestamp

FUZZ = settings(max_examples=150, deadline=None, database=None)

IDS = ["a", "b", "c", "7", " b ", "", "None", "True", "zzz"]
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(), st.text(max_size=6),
                   st.sampled_from(IDS))
JSON_VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=5)
TEXT_VALUE = st.one_of(JSON_VALUE, st.sampled_from(["Hammer", "", "  ", "['x', 'y']", "[1, 2]", "[", "x\ud800"]))
RECORD = st.fixed_dictionaries({}, optional={"title": TEXT_VALUE, "description": TEXT_VALUE, "brand": TEXT_VALUE,
                                             "categories": TEXT_VALUE, "extra": JSON_VALUE})
GOOD_TEXT = st.sampled_from(["Hammer", "Saw ", "['x', 'y']", "Café"])
GOOD_RECORD = st.fixed_dictionaries({"title": GOOD_TEXT}, optional={
    "description": st.one_of(GOOD_TEXT, st.lists(GOOD_TEXT, max_size=2)), "brand": GOOD_TEXT, "extra": JSON_VALUE})
# mostly UTF-8, so that most examples get past decoding to the records
ENCODING = st.sampled_from(["utf-8"] * 12 + ["utf-8-sig", "utf-16", "utf-16-le", "latin-1"])
QUOTED = st.sampled_from([True, True, True, False])  # csv.writer's quoting, or fields joined raw
JUNK = st.sampled_from([b""] * 6 + [b"\xff", b"\x00", b"\r", b"\n\n"])


@st.composite
def mixed(draw, good, bad, min_size=1, max_size=6, bad_odds=2):
    """A list of good entries, in one example of `bad_odds` with up to two bad ones inserted anywhere."""
    out = list(good) if isinstance(good, list) else draw(st.lists(good, min_size=min_size, max_size=max_size))
    if draw(st.integers(1, bad_odds)) == 1:
        for entry in draw(st.lists(bad, min_size=1, max_size=2)):
            out.insert(draw(st.integers(0, len(out))), entry)
    return out


def encode(text: str, encoding: str, junk: bytes) -> bytes:
    return text.encode(encoding, errors="replace") + junk


def csv_text(header: str, rows: list[list[str]], quoted: bool) -> str:
    """Rows written by csv.writer (well-formed CSV) or joined raw (stray quotes, commas, newlines)."""
    if not quoted:
        return header + "\n" + "".join(",".join(row) + "\n" for row in rows)
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return header + "\n" + out.getvalue()


def check_outcome(load, files: dict[Path, bytes], max_history: int | None = None):
    """The loaded dataset (checked), or None after a ValueError that names a file (and a line that exists)."""
    try:
        ds = load()
    except ValueError as e:
        message = str(e)
        owner = [f for f in files if message.startswith(str(f))]
        assert owner, f"message does not start with the file it is about: {message}"
        line = re.match(re.escape(str(owner[0])) + r":(\d+):", message)
        if line:  # a record problem: its physical line exists in the file
            assert 1 <= int(line.group(1)) <= len(re.split(rb"\r\n|\r|\n", files[owner[0]])), message
        return None
    return check_dataset(ds, max_history)


def csv_rows(data: bytes) -> list[list[str]]:
    """The data rows of a CSV the loader accepted (header and blank lines dropped): the oracle for row counts."""
    return [row for row in csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))][1:]


def check_dataset(ds, max_history: int | None):
    """What the stages rely on: unique non-empty string ids, a plain title, text fields, rows over known items."""
    ids = [it["item_id"] for it in ds.items]
    assert len(set(ids)) == len(ids) and all(isinstance(i, str) and i and i == i.strip() for i in ids)
    for it in ds.items:
        assert isinstance(it["title"], str) and it["title"] and it["title"] == it["title"].strip()
        assert all(isinstance(it[k], str) for k in ("description", "brand", "categories"))
        json.dumps(it, ensure_ascii=False).encode("utf-8")  # Dataset.write can store it
    known = set(ids)
    for split in SPLITS:
        for row in ds.splits[split]:
            assert isinstance(row["user_id"], str) and row["user_id"].strip()
            assert 1 <= len(row["history"]) <= (max_history or len(row["history"])) and row["target"] in known
            assert all(isinstance(h, str) and h in known for h in row["history"])
    return ds


# a, b and c (the ids GOOD_ROW uses) and sometimes 7, in any order
GOOD_ITEMS = st.tuples(st.permutations(["a", "b", "c", 7]), st.booleans(), st.lists(GOOD_RECORD, min_size=4,
                       max_size=4)).map(lambda t: [json.dumps({"item_id": i, **rec}) for i, rec in zip(t[0], t[2])
                                                   if t[1] or i != 7])
BAD_ITEM = st.one_of(
    st.builds(lambda i, rec: json.dumps({"item_id": i, **rec}), st.one_of(st.sampled_from(IDS), SCALAR), RECORD),
    st.builds(lambda rec: json.dumps(rec), RECORD),
    st.sampled_from(["", "  ", "{", "[1]", "null", '{"item_id": "a", "title": "x"} trailing']),
)
GOOD_ROW = st.tuples(st.sampled_from(["u1", "u2", "u3 "]), st.sampled_from(["a", "b", "c", "7", " a"]),
                     st.one_of(st.integers(0, 4102444800).map(str), st.floats(0, 4e9).map(repr),
                               st.sampled_from(["2018-01-01", "2018-01-01T10:00:00Z"]))).map(list)
BAD_FIELD = st.one_of(st.sampled_from(IDS), st.text(max_size=5), st.sampled_from(
    ["nan", "inf", "-1", "1e20", "1700000000000", "4102444801", "2150-01-01", "1969-12-31", "x", '"', "a,b", ""]))
BAD_ROW = st.one_of(st.lists(BAD_FIELD, min_size=3, max_size=3), st.lists(BAD_FIELD, max_size=4))


@FUZZ
@given(
    items=GOOD_ITEMS.flatmap(lambda good: mixed(good, BAD_ITEM, bad_odds=4)),
    header=st.sampled_from(["user_id,item_id,timestamp"] * 8 + ["user_id,item_id", "\ufeffuser_id,item_id,timestamp",
                                                                 " user_id , item_id ,timestamp", ""]),
    rows=mixed(GOOD_ROW, BAD_ROW, max_size=12),
    quoted=QUOTED,
    encodings=st.tuples(ENCODING, ENCODING),
    junk=JUNK,
    max_history=st.integers(1, 3),
)
def test_generic_loader_fuzz(items, header, rows, quoted, encodings, junk, max_history):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = {root / "items.jsonl": encode("\n".join(items) + "\n", encodings[0], b""),
                 root / "interactions.csv": encode(csv_text(header, rows, quoted), encodings[1], junk)}
        for path, data in files.items():
            path.write_bytes(data)
        ds = check_outcome(lambda: load_generic(root, max_history), files, max_history)
    if ds is not None:  # one row per interaction after each user's first, exact repeats dropped
        rows = [row for row in csv_rows(files[root / "interactions.csv"]) if row]
        distinct = {(user.strip(), item.strip(), parse_timestamp(ts, "")) for user, item, ts in rows}
        assert sum(len(ds.splits[s]) for s in SPLITS) == len(distinct) - len({user for user, _, _ in distinct})


GOOD_CATALOG = st.fixed_dictionaries({"0": GOOD_RECORD, "1": GOOD_RECORD}, optional={"2": GOOD_RECORD})
BAD_CATALOG = st.one_of(
    st.dictionaries(st.sampled_from(["0", "1", " 1", "", "2"]), st.one_of(RECORD, JSON_VALUE), max_size=4),
    JSON_VALUE,
)
GOOD_MROW = st.tuples(st.sampled_from(["A1", "A2"]), st.sampled_from(["[0]", "[0, 1]", "['1', 0]", "[1, 1, 0]"]),
                      st.sampled_from(["0", "1", " 1"])).map(list)
BAD_MROW = st.one_of(
    st.tuples(st.sampled_from(["A1", "", " "]), st.one_of(st.text(max_size=6), st.sampled_from(
        ["[]", "", "[True]", "[0.0]", "[[0]]", "0", "x", "[" * 60, "(0, 1)", "{0}", "[7]", "[10**5000]", "{[]: 1}"])),
        st.sampled_from(["0", "7", "", "x"])).map(list),
    st.lists(st.text(max_size=4), max_size=4),
)


@FUZZ
@given(
    catalog=st.one_of(
        GOOD_CATALOG.map(json.dumps), GOOD_CATALOG.map(json.dumps), GOOD_CATALOG.map(json.dumps),
        BAD_CATALOG.map(json.dumps),
        st.sampled_from(['{"0": {"title": "A"}, "0": {"title": "B"}}', '{"0": {"title": "A"},', "", "[" * 3000]),
    ),
    header=st.sampled_from(["user_id,history_item_id,item_id"] * 8 + ["user_id,item_id", "user_id,item_id,x,y"]),
    splits=st.tuples(*[st.tuples(mixed(GOOD_MROW, BAD_MROW, max_size=4, bad_odds=6), QUOTED)] * 3),
    encodings=st.tuples(ENCODING, ENCODING),
    junk=JUNK,
)
def test_minionerec_loader_fuzz(catalog, header, splits, encodings, junk):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = {root / "index" / "Toy.item.json": encode(catalog, encodings[0], b"")}
        paths = [root / "recovered_partial" / "Toy.train_recovered_subset.csv", root / "valid" / "Toy_5.csv",
                 root / "test" / "Toy_5.csv"]
        for path, (rows, quoted) in zip(paths, splits):
            files[path] = encode(csv_text(header, rows, quoted), encodings[1], junk)
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        ds = check_outcome(lambda: load_minionerec(root), files)
        if ds is not None:  # one row per CSV row, split by file
            assert [len(ds.splits[s]) for s in SPLITS] == [len([r for r in csv_rows(files[p]) if r]) for p in paths]
