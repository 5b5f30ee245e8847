"""Atomic file writes and small readers shared by every stage.

Every artifact is written to a temporary file in the same directory and then renamed over the
target, so a killed stage never leaves a half-written file that a resumed run would trust.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import re
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`, on error delete it.

    Example:
        >>> with atomic_path("out/model.pt") as tmp:  # doctest: +SKIP
        ...     torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; artifacts get the usual permissions
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def _os_error(path: Path, e: OSError, missing: str) -> Exception:
    """One line "file: problem; fix" for an OS error, as ValueError / FileNotFoundError (what the CLI reports)."""
    if isinstance(e, FileNotFoundError):
        return FileNotFoundError(f"{path} does not exist; {missing}")
    if isinstance(e, IsADirectoryError):
        return ValueError(f"{path}: is a directory, not a file; point to the file itself")
    if isinstance(e, PermissionError):
        return ValueError(f"{path}: permission denied; make it readable (chmod u+r) or copy it somewhere readable")
    return ValueError(f"{path}: cannot be read ({e.strerror or e}); check the path")


def _decode(data: bytes, path: Path) -> str:
    """UTF-8 text, a leading BOM dropped (spreadsheets write one); anything else names the file and the fix."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ValueError(f"{path}: not UTF-8 text (UTF-16, by its byte-order mark); save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8") from None
    if "\x00" in text:  # UTF-16 without a byte-order mark decodes as UTF-8 with a NUL after every ASCII letter
        line = text[: text.index("\x00")].count("\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (NUL bytes: UTF-16?); save it as UTF-8")
    return text


def read_text(path: str | os.PathLike, missing: str = "run the stage that writes it first") -> str:
    """The whole text of a UTF-8 file; every file genrec reads as text comes through here.

    OS and codec errors become one "file: problem; fix" line (FileNotFoundError for a missing file, ValueError
    otherwise) that the CLI prints without a traceback. `missing` is the fix for a missing file: stage outputs
    name the stage that writes them, user inputs the setting that points to them.

    Example:
        >>> read_text("data/shop/items.jsonl", missing="check data.path")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _os_error(path, e, missing) from None
    return _decode(data, path)


def read_lines(path: str | os.PathLike,
               missing: str = "run the stage that writes it first") -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line of a UTF-8 file, plain or gzipped (told by its first bytes),
    streamed: a file of tens of GB is never held whole. Errors are one "file:line: problem; fix" line, as `read_text`.

    Example:
        >>> for lineno, line in read_lines("data/amazon/meta_Industrial.jsonl.gz", missing="check data.path"):
        ...     pass  # doctest: +SKIP
    """
    path = Path(path)
    lineno = 0
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            for lineno, data in enumerate(f, 1):
                if lineno == 1 and data[:2] in (b"\xff\xfe", b"\xfe\xff"):
                    raise ValueError(f"{path}: not UTF-8 text (UTF-16, by its byte-order mark); save it as UTF-8")
                try:
                    text = data.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte 0x{data[e.start]:02x}); save it as "
                                     "UTF-8") from None
                if "\x00" in text:
                    raise ValueError(f"{path}:{lineno}: not UTF-8 text (NUL bytes: UTF-16?); save it as UTF-8")
                if text.strip():
                    yield lineno, text
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}:{lineno + 1}: the gzip stream is damaged or cut short ({e or type(e).__name__}); "
                         "download or compress the file again") from None
    except OSError as e:
        raise _os_error(path, e, missing) from None


def file_sha256(path: str | os.PathLike, cache: dict | None = None) -> str:
    """Hex sha256 of a file's bytes, "missing" when there is no such file (the loader reports that, not this).

    `cache` maps str(path) -> {"size", "mtime_ns", "sha256"}; a file whose size and mtime are unchanged is not
    read again, so fingerprinting a large unchanged input costs one stat. Entries are added or refreshed in place.
    """
    path = Path(path)
    try:
        st = path.stat()
        if not path.is_file():
            return "missing"
        key, entry = str(path), (cache or {}).get(str(path))
        if isinstance(entry, dict) and (entry.get("size"), entry.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
            if isinstance(entry.get("sha256"), str):
                return entry["sha256"]
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        raise _os_error(path, e, "check the path") from None
    if cache is not None:
        cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()}
    return digest.hexdigest()


# atomic_path's temporaries: "." + target name + "." + mkstemp's 8 random characters + ".tmp"
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_stale_temp_files(folder: str | os.PathLike, max_age_s: float = 3600.0) -> list[Path]:
    """Delete atomic_path temporaries under `folder` not modified for `max_age_s` seconds; return them.

    A killed write leaves its temporary behind forever; one that is still being written (by another process
    sharing the run directory) is younger than an hour, since a write keeps touching its file.
    """
    removed, now = [], time.time()
    for parent, _, files in os.walk(folder):  # does not follow symlinks out of the run directory
        for name in files:
            path = Path(parent) / name
            try:
                if _TEMP_NAME.fullmatch(name) and now - path.lstat().st_mtime > max_age_s:
                    path.unlink()
                    removed.append(path)
            except OSError:  # removed meanwhile, or not ours to remove: leave it
                continue
    return removed


def json_type(value: Any) -> str:
    """A value's type as a JSON or YAML file spells it, for messages ("a string", "null", "an object")."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
             int: "an integer", float: "a number"}
    return names.get(type(value), type(value).__name__)


def describe_value(value: Any) -> str:
    """Type and (shortened) value for a message: "a string 'abc'", "a list [1, 2]", "null"."""
    return "null" if value is None else f"{json_type(value)} {repr(value)[:60]}"


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete it and re-run the stage that writes it") from None


def read_jsonl_lines(
    path: str | os.PathLike, missing: str = "run the stage that writes it first"
) -> list[tuple[int, dict]]:
    """(physical line number, object) for each non-blank line, so messages about a record name its real line."""
    path = Path(path)
    records = []
    for lineno, line in enumerate(read_text(path, missing).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from None
        except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits, or [[[[...
            raise ValueError(f"{path}:{lineno}: not valid JSON ({type(e).__name__}); fix or remove it") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object per line, got {json_type(rec)}")
        records.append((lineno, rec))
    return records


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [rec for _, rec in read_jsonl_lines(path)]


def load_yaml(text: str) -> Any:
    """Parse YAML text safely, reading ``2e-4`` as a float and ``2016-10-01`` as a string, as YAML 1.2 does.

    PyYAML follows YAML 1.1, where a float needs a dot (``2.0e-4``) and ``2e-4`` stays a string
    that only fails later, deep inside an optimizer; and where an unquoted date becomes a `datetime.date`,
    which no config option takes (``data.start`` is text). Configs and ``--set`` values go through here.

    Example:
        >>> load_yaml("learning_rate: 2e-4")
        {'learning_rate': 0.0002}
        >>> load_yaml("start: 2016-10-01")
        {'start': '2016-10-01'}
    """
    import yaml

    return yaml.load(text, Loader=_yaml_loader())


@functools.cache
def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    timestamp = "tag:yaml.org,2002:timestamp"  # YAML 1.2 has no timestamp type: a date stays the text it is
    Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag != timestamp]
                                      for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    # The YAML 1.1 float pattern with the dot optional; also keeps .inf/.nan and 1_000.5.
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                      |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                      |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                      |[-+]?\.(?:inf|Inf|INF)
                      |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."),
    )
    return Loader


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """A YAML file that must hold a mapping (a config); errors name the file, the line and the fix."""
    import yaml

    path = Path(path)
    text = read_text(path, missing=f"check the {what} path")
    try:
        values = load_yaml(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ValueError(f"{where}: not valid YAML ({getattr(e, 'problem', e)}); fix the {what}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a {what} must be a mapping of option: value, got {type(values).__name__}")
    return values

