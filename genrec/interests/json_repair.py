"""JSON out of an LLM answer: the last complete object, with the repairs that are safe.

Models wrap their JSON in reasoning (<think>...</think>), ``` fences and prose, and write near-JSON: trailing
commas, single-quoted strings, Python's True/False/None. `extract_json` finds the last complete object (an array
when there is no object), parses it, and on failure parses it again after those repairs; anything else (a missing
comma, an unbalanced quote, an answer cut off at max_tokens) is a ValueError saying what is wrong, so the caller
can ask again instead of guessing.

Example:
    >>> extract_json('<think>...</think> Here it is: ```json {"interests": [{"interest": "woodworking",},]} ```')
    {'interests': [{'interest': 'woodworking'}]}
"""

from __future__ import annotations

import json
import re
from typing import Any

_THINK = re.compile(r"<think>.*?</think>", re.S)
_LITERALS = {"True": "true", "False": "false", "None": "null"}
_WORD = re.compile(r"[A-Za-z_]+")
_TRAILING_COMMA = re.compile(r",\s*[}\]]")


def extract_json(text: str) -> Any:
    """The last complete JSON object in an LLM answer (an array when there is no object), repaired where safe.

    Reasoning in <think>...</think>, ``` fences and prose around the JSON are ignored; trailing commas, single-quoted
    strings and Python literals (True/False/None) are repaired. Raises ValueError saying what is wrong.

    Example:
        >>> extract_json("Let me think. {'interests': [{'interest': 'woodworking', 'confidence': 0.9,},]} Done.")
        {'interests': [{'interest': 'woodworking', 'confidence': 0.9}]}
    """
    text = _THINK.sub("", text or "")
    if "</think>" in text:  # the opening tag was part of the prompt (some chat templates add it)
        text = text.rsplit("</think>", 1)[1]
    if "<think>" in text:  # reasoning cut off before it closed: nothing after it is an answer
        text = text[: text.index("<think>")]
    spans = _top_level_spans(text)
    if not spans:
        raise ValueError("the answer holds no complete JSON object (cut off? raise max_tokens)")
    error = None
    for start, end in sorted(spans, key=lambda s: (text[s[0]] == "{", s[0]), reverse=True):
        raw = text[start:end + 1]
        for candidate in (raw, _repair(raw)):
            try:
                return json.loads(candidate)
            except json.JSONDecodeError as e:
                error = error or e
    raise ValueError(f"the answer's JSON does not parse ({error.msg} at char {error.pos})")


def _top_level_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every balanced {...} / [...] not inside another, skipping quoted strings."""
    spans, i = [], 0
    while i < len(text):
        if text[i] in "{[":
            end = _span_end(text, i)
            if end is not None:
                spans.append((i, end))
                i = end
        i += 1
    return spans


def _span_end(text: str, start: int) -> int | None:
    depth, quote, escaped = 0, None, False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i
    return None


def _repair(raw: str) -> str:
    """Single-quoted strings -> JSON strings, trailing commas dropped, True/False/None -> JSON literals."""
    out, i = [], 0
    while i < len(raw):
        ch = raw[i]
        if ch in "\"'":
            end = _span_end_of_string(raw, i)
            body = raw[i + 1:end]
            if ch == "'":
                body = re.sub(r"\\'", "'", body)
                body = re.sub(r'(?<!\\)"', r'\\"', body)
            out.append(f'"{body}"')
            i = end + 1
            continue
        if ch == "," and _TRAILING_COMMA.match(raw, i):
            i += 1
            continue
        word = _WORD.match(raw, i)
        if word:
            out.append(_LITERALS.get(word.group(), word.group()))
            i += len(word.group())
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _span_end_of_string(raw: str, start: int) -> int:
    escaped = False
    for i in range(start + 1, len(raw)):
        if escaped:
            escaped = False
        elif raw[i] == "\\":
            escaped = True
        elif raw[i] == raw[start]:
            return i
    return len(raw) - 1
