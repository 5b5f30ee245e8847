"""Config dataclasses from YAML mappings: the one builder (`from_dict`) and the type check it runs.

Every config section a user writes (a pipeline YAML's stage sections, ``genrec mine --config``) becomes its
dataclass here, so unknown options and values of the wrong type fail the same way everywhere, naming the file and
section, before any stage runs. It sits at the bottom of the package so that stages and the pipeline can both use
it.

Example:
    >>> from_dict(QuantizeConfig, {"levels": 4}, "configs/tokenizer/x.yaml").levels  # doctest: +SKIP
    4
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from genrec.io import describe_value, json_type


def _matches(value, tp) -> bool:
    """Whether a YAML value fits a field annotation; int fits float, bool fits only bool, "3" never fits int."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp in (list, tuple) or origin in (list, tuple):  # YAML spells every sequence as a list
        item = args[0] if args else Any
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if tp is dict or origin is dict:
        key, val = args if len(args) == 2 else (Any, Any)
        return isinstance(value, dict) and all(_matches(k, key) and _matches(v, val) for k, v in value.items())
    if tp is Path:
        return isinstance(value, (str, Path))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # annotations this checker does not model are left to the dataclass


def _type_name(tp) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "").replace("NoneType", "None")


def check_types(cls, values: dict, where: str, section: str | None = None) -> None:
    """Refuse values whose type does not fit the field, before the dataclass (or a stage, much later) sees them.

    YAML and --set values arrive with YAML's types: "abc" or 2.5 for an int fails here with the option, the expected
    type and the value. A quoted "3" is refused too rather than coerced, so the YAML says what the code gets.

    Example:
        >>> check_types(DataConfig, {"max_history": 2.5}, "p.yaml", "data")  # doctest: +SKIP
        ValueError: p.yaml: data.max_history=2.5: expected int, got a number
    """
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        tp = hints.get(key, Any)
        if not _matches(value, tp):
            name = f"{section}.{key}" if section else key
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            hint = f' (YAML reads an unquoted {value} as a number: quote it, {key}: "{value}")' if (
                number and _matches(str(value), tp)) else ""
            raise ValueError(f"{where}: {name}={repr(value)[:80]}: expected {_type_name(tp)}, got {json_type(value)}"
                             f"{hint}")


def from_dict(cls, values: dict | None, where: str, section: str | None = None):
    """Build a config dataclass from a YAML mapping with transformers' HfArgumentParser.

    Unknown keys fail with the list of valid ones and wrongly typed values with the type expected (check_types),
    both naming `where` (file and section), before any stage runs.

    Example:
        >>> from_dict(QuantizeConfig, {"levels": 4}, "configs/tokenizer/x.yaml").levels  # doctest: +SKIP
        4
    """
    from transformers import HfArgumentParser

    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of option: value, got {describe_value(values)}; write one "
                         "option per line under the section, e.g. 'seed: 1'")
    names = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    unknown = sorted(str(k) for k in values if k not in names)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; valid options are {names}")
    check_types(cls, values, where, section)
    try:
        (obj,) = HfArgumentParser(cls).parse_dict(values, allow_extra_keys=False)
    except TypeError as e:  # e.g. a required option left out
        raise ValueError(f"{where}: {e}") from None
    return obj
