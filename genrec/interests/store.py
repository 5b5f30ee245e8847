"""A store of mined answers that loses nothing: SQLite (standard library) in WAL mode, one commit per answer.

Rows are keyed by (item_id, source, task, prompt_hash): `source` is the backend that answered (a model name),
`task` the question ("interests", "archetype"), `prompt_hash` a hash of the exact prompt (template, item text and
generation settings), so an edited prompt or item is asked again while an unchanged one never is. Only validated
answers are stored as results; a failed item is recorded with its reason in a separate table and is asked again
on the next run (its failure row goes away when it succeeds). A run killed at any point keeps every answer that
was committed before the kill.

Example:
    >>> store = InterestStore("runs/demo/interests.store.sqlite")  # doctest: +SKIP
    >>> store.put("42", "Qwen/Qwen3-8B", "interests", "ab12", [{"text": "sawing", "confidence": .9}])  # doctest: +SKIP
    >>> store.missing("Qwen/Qwen3-8B", "interests", {"42": "ab12", "43": "cd34"})  # doctest: +SKIP
    ['43']
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    item_id TEXT NOT NULL, source TEXT NOT NULL, task TEXT NOT NULL, prompt_hash TEXT NOT NULL,
    value TEXT NOT NULL, answer TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, attempts INTEGER,
    created REAL NOT NULL,
    PRIMARY KEY (item_id, source, task, prompt_hash)
);
CREATE TABLE IF NOT EXISTS failures (
    item_id TEXT NOT NULL, source TEXT NOT NULL, task TEXT NOT NULL, prompt_hash TEXT NOT NULL,
    reason TEXT NOT NULL, answer TEXT, attempts INTEGER, runs INTEGER NOT NULL DEFAULT 1, updated REAL NOT NULL,
    PRIMARY KEY (item_id, source, task)
);
"""


class InterestStore:
    """Persistent results and failures of the mine stage (see the module docstring).

    Use one store from one thread (the mine stage's event loop runs in the calling thread); close it when done,
    or use it as a context manager.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # autocommit: every put is its own transaction, durable once the call returns
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path}: not a usable SQLite store ({e}); delete it to start mining afresh "
                             "(every item will be asked again)") from None

    def __enter__(self) -> InterestStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------- writing

    def put(self, item_id: str, source: str, task: str, prompt_hash: str, value: Any, *, answer: str | None = None,
            prompt_tokens: int = 0, completion_tokens: int = 0, attempts: int = 1) -> None:
        """Store one validated result (JSON-serialisable `value`) and clear the item's failure, in one commit."""
        self._insert([(item_id, source, task, prompt_hash, json.dumps(value, ensure_ascii=False), answer,
                       prompt_tokens, completion_tokens, attempts, time.time())])

    def put_many(self, rows: Iterable[tuple[str, str, str, str, Any]]) -> None:
        """Store many (item_id, source, task, prompt_hash, value) results in one transaction."""
        now = time.time()
        self._insert([(iid, src, task, ph, json.dumps(value, ensure_ascii=False), None, 0, 0, 1, now)
                      for iid, src, task, ph, value in rows])

    def _insert(self, records: list[tuple]) -> None:
        with self.db:  # one transaction: the results and the cleared failures land together or not at all
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
            self.db.executemany("DELETE FROM failures WHERE item_id = ? AND source = ? AND task = ?",
                                [r[:3] for r in records])

    def fail(self, item_id: str, source: str, task: str, prompt_hash: str, reason: str, *,
             answer: str | None = None, attempts: int = 1) -> None:
        """Record why an item failed (counting the runs it failed in); it stays missing, so the next run asks again."""
        self.db.execute(
            "INSERT INTO failures VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (item_id, source, task) DO UPDATE "
            "SET prompt_hash = excluded.prompt_hash, reason = excluded.reason, answer = excluded.answer, "
            "attempts = excluded.attempts, runs = runs + 1, updated = excluded.updated",
            (item_id, source, task, prompt_hash, reason, answer, attempts, time.time()))

    # ------------------------------------------------------------------------- reading

    def results(self, source: str, task: str, hashes: dict[str, str]) -> dict[str, Any]:
        """item_id -> stored value, for the items of `hashes` (item_id -> current prompt hash) stored with it."""
        rows = self.db.execute("SELECT item_id, prompt_hash, value FROM results WHERE source = ? AND task = ?",
                               (source, task))
        return {iid: json.loads(value) for iid, ph, value in rows if hashes.get(iid) == ph}

    def missing(self, source: str, task: str, hashes: dict[str, str]) -> list[str]:
        """Items of `hashes` with no result for their current prompt hash, in the order of `hashes`."""
        rows = self.db.execute("SELECT item_id, prompt_hash FROM results WHERE source = ? AND task = ?",
                               (source, task))
        done = {iid for iid, ph in rows if hashes.get(iid) == ph}
        return [iid for iid in hashes if iid not in done]

    def failures(self, source: str | None = None, task: str | None = None) -> dict[tuple[str, str, str], dict]:
        """(item_id, source, task) -> {"reason", "attempts", "runs", "answer"} of every item still failing."""
        query, args = "SELECT item_id, source, task, reason, attempts, runs, answer FROM failures", []
        where = [(col, val) for col, val in (("source", source), ("task", task)) if val is not None]
        if where:
            query += " WHERE " + " AND ".join(f"{col} = ?" for col, _ in where)
            args = [val for _, val in where]
        return {(iid, src, tsk): {"reason": reason, "attempts": attempts, "runs": runs, "answer": answer}
                for iid, src, tsk, reason, attempts, runs, answer in self.db.execute(query, args)}

    def tokens(self) -> dict[str, int]:
        """Prompt and completion tokens of every stored result."""
        p_tok, c_tok = self.db.execute("SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) "
                                       "FROM results").fetchone()
        return {"prompt_tokens": int(p_tok), "completion_tokens": int(c_tok)}
