"""A prefix trie over the SID token ids of a catalog, answering "which tokens may come next" for a whole batch.

The trie is stored flat (CSR): nodes are numbered level by level in lexicographic order, so the edge into node
``n`` is edge ``n - 1``, the children of node ``n`` are the contiguous edges ``indptr[n]:indptr[n + 1]`` (sorted by
token), and the sorted key ``parent * key_base + token`` of every edge finds a child with one ``searchsorted``.
Nothing here loops over rows or items in Python at decode time: a batch of partial SIDs is walked with one
vectorised lookup per generated token, and the allowed (row, token) pairs come out as two flat tensors whose size
is the number of allowed tokens, never rows x vocabulary. Per-step cost depends on the branching factor (bounded by
the codebook size), not on the number of items (the lookup is a binary search, O(log edges)).

Row states: a node id (>= 0), ``DONE`` after the EOS that closes a complete SID, or ``DEAD`` for a prefix that is
not in the catalog. A complete SID allows EOS (and its children when another SID extends it); ``DONE`` and
``DEAD`` rows allow only EOS, so no row is ever left unconstrained.

Example:
    >>> trie = SIDTrie.from_token_ids([[5, 7], [5, 8, 9]], ["a", "b"], eos_token_id=2)
    >>> trie.allowed_tokens([5])
    [7, 8]
    >>> trie.allowed_tokens([5, 7])
    [2]
    >>> trie.item_ids[trie.lookup(torch.tensor([[5, 8, 9, 2]]))[0]]
    'b'
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genrec.io import atomic_path, write_json
from genrec.sid import sid_tokens

logger = logging.getLogger(__name__)

DEAD = -1
DONE = -2
_PAD = -1


@dataclass
class Recommendation:
    """Top items for one prompt, best first; `invalid` counts scored beams that were not a catalog item. What every
    search over the trie returns (genrec's beam search, the ``generate`` and vLLM adapters); it lives here, below
    them all, so the adapters need not import the beam search that dispatches to them."""

    items: list[str]
    scores: list[float]
    invalid: int = 0


class SIDTrie:
    """Prefix trie over the token-id sequences of a catalog's SIDs; build it with `from_sids` or `from_token_ids`.

    Attributes (tensors, moved together by `to`): ``edge_key`` (sorted ``parent * key_base + token``),
    ``edge_token``, ``indptr`` (children of node n are edges ``indptr[n]:indptr[n+1]``, the edge into node n is
    ``n - 1``), ``node_item`` (item index of a node that completes a SID, else -1), ``node_terminal``.
    """

    def __init__(
        self,
        *,
        edge_token: torch.Tensor,
        parent: torch.Tensor,
        node_item: torch.Tensor,
        item_ids: list[str],
        eos_token_id: int,
        depth: int,
    ):
        num_nodes = node_item.shape[0]
        self.item_ids = list(item_ids)
        self.eos_token_id = int(eos_token_id)
        self.depth = int(depth)
        self.key_base = int(edge_token.max().item()) + 1 if edge_token.numel() else 1
        self.edge_token = edge_token
        self.edge_key = parent * self.key_base + edge_token
        counts = torch.bincount(parent, minlength=num_nodes)
        self.indptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
        self.node_item = node_item
        self.node_terminal = node_item >= 0
        self._level_ranges: list[tuple[int, int]] | None = None  # filled by _levels on first use
        assert bool((self.edge_key[1:] > self.edge_key[:-1]).all()), "edges must be sorted by (parent, token)"

    # ------------------------------------------------------------------------- construction

    @classmethod
    def from_token_ids(
        cls, sequences: Sequence[Sequence[int]] | np.ndarray, item_ids: Sequence[str], *, eos_token_id: int
    ) -> SIDTrie:
        """Build from one token-id sequence per item (lengths may differ; a SID may be a prefix of another's).

        `sequences` may be a list of lists or an int array ``(items, depth)`` padded with -1.
        """
        seqs = _pad(sequences)
        item_ids = [str(i) for i in item_ids]
        if len(item_ids) != seqs.shape[0]:
            raise ValueError(f"{seqs.shape[0]} SIDs for {len(item_ids)} item ids; pass one item id per SID")
        if seqs.shape[0] == 0:
            raise ValueError("no SIDs: the catalog is empty")
        valid = seqs != _PAD
        lengths = valid.sum(1)
        if (lengths == 0).any() or (valid[:, 1:] & ~valid[:, :-1]).any():
            raise ValueError("every SID needs at least one token and no gaps; check the item -> SID map")
        if (seqs[valid] < 0).any():
            raise ValueError("SID token ids must be non-negative")
        if (seqs == eos_token_id).any():
            raise ValueError(f"a SID contains the EOS token id {eos_token_id}; SID tokens must differ from EOS")
        return cls(**_build_csr(seqs, lengths, item_ids), item_ids=item_ids, eos_token_id=eos_token_id)

    @classmethod
    def from_sids(cls, sids: dict[str, list[int]], tokenizer, *, eos_token_id: int | None = None) -> SIDTrie:
        """Build from an item -> SID codes map (``sids.json``) and a tokenizer that holds the SID tokens.

        Example:
            >>> trie = SIDTrie.from_sids(Run(run_dir).sids(), tokenizer)  # doctest: +SKIP
        """
        if not sids:
            raise ValueError("empty item -> SID map; run the quantize stage first")
        eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token or pass eos_token_id")
        item_ids = list(sids)
        depth = max(len(c) for c in sids.values())
        codes = np.full((len(item_ids), depth), _PAD, dtype=np.int64)
        for i, c in enumerate(sids.values()):
            codes[i, : len(c)] = c
        lengths = np.fromiter((len(c) for c in sids.values()), dtype=np.int64, count=len(item_ids))
        if (lengths == 0).any() or (codes < _PAD).any() or ((codes != _PAD).sum(1) != lengths).any():
            raise ValueError("every SID needs at least one code and codes must be non-negative; check sids.json")
        seqs = np.full_like(codes, _PAD)
        for level in range(depth):
            present = codes[:, level] != _PAD
            used, inverse = np.unique(codes[present, level], return_inverse=True)
            ids = np.asarray(_token_ids(tokenizer, level, used), dtype=np.int64)
            seqs[present, level] = ids[inverse.reshape(-1)]
        return cls.from_token_ids(seqs, item_ids, eos_token_id=int(eos))

    # ------------------------------------------------------------------------- decoding steps

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_nodes(self) -> int:
        return self.node_item.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the trie's tensors (item id strings not included)."""
        tensors = (self.edge_token, self.edge_key, self.indptr, self.node_item, self.node_terminal)
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str) -> SIDTrie:
        """Move the tensors (in place) to `device`; returns self."""
        for name in ("edge_token", "edge_key", "indptr", "node_item", "node_terminal"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def walk(self, generated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """States of rows after their generated tokens ``(rows, steps)``, and the item each row closed with EOS.

        Returns ``(state, item)``: state is a node id, ``DONE`` or ``DEAD``; item is the index into `item_ids` of
        the SID a ``DONE`` row completed, else -1. Tokens after EOS are ignored, and negative tokens are padding
        that leaves a row's state unchanged (rows of different lengths can share one tensor).
        """
        rows = generated.shape[0]
        device = generated.device
        state = torch.zeros(rows, dtype=torch.int64, device=device)
        item = torch.full((rows,), -1, dtype=torch.int64, device=device)
        for step in range(generated.shape[1]):
            tok = generated[:, step].to(torch.int64)
            live = (state >= 0) & (tok >= 0)
            node = state.clamp(min=0)
            child = self.child(node, tok)
            closes = live & (tok == self.eos_token_id) & self.node_terminal[node]
            item = torch.where(closes, self.node_item[node], item)
            nxt = torch.where(closes, DONE, torch.where(child >= 0, child, DEAD))
            state = torch.where(live, nxt, state)
        return state, item

    def child(self, node: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
        """Child node of (node, token) per row, or -1."""
        in_range = (tok >= 0) & (tok < self.key_base)
        key = node * self.key_base + tok.clamp(0, self.key_base - 1)
        pos = torch.searchsorted(self.edge_key, key).clamp(max=self.edge_key.shape[0] - 1)
        hit = in_range & (self.edge_key[pos] == key)
        return torch.where(hit, pos + 1, -1)

    def allowed(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Allowed next tokens of every row as flat ``(row_index, token_id)`` pairs (no rows x vocab tensor).

        A node allows its children and, when it completes a SID, EOS; ``DONE`` and ``DEAD`` rows allow only EOS.
        """
        device = state.device
        live = state >= 0
        node = state.clamp(min=0)
        start = self.indptr[node]
        counts = torch.where(live, self.indptr[node + 1] - start, 0)
        total = int(counts.sum())
        row_ids = torch.arange(state.shape[0], device=device)
        rows = torch.repeat_interleave(row_ids, counts, output_size=total)
        first = torch.cumsum(counts, 0) - counts
        edges = torch.arange(total, device=device) + torch.repeat_interleave(start - first, counts, output_size=total)
        eos_rows = row_ids[~live | self.node_terminal[node]]
        eos = torch.full_like(eos_rows, self.eos_token_id)
        return torch.cat([rows, eos_rows]), torch.cat([self.edge_token[edges], eos])

    def lookup(self, generated: torch.Tensor) -> list[int | None]:
        """Item index of each generated row (SID tokens then EOS), or None when it is not a complete catalog SID."""
        _, item = self.walk(generated)
        return [i if i >= 0 else None for i in item.tolist()]

    def allowed_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Allowed next tokens after one prefix (a convenience for tests and debugging)."""
        state, _ = self.walk(torch.tensor([list(prefix)], dtype=torch.int64, device=self.edge_key.device))
        _, tokens = self.allowed(state)
        return sorted(tokens.tolist())

    # ------------------------------------------------------------------------- persistence

    def save(self, path: str | Path) -> None:
        """Write the trie to ``path`` (a directory: ``trie.npz`` + ``items.json``), e.g. for vLLM workers."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / "trie.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, edge_token=self.edge_token.cpu().numpy(), parent=self._parents().cpu().numpy(),
                     node_item=self.node_item.cpu().numpy())
        write_json(path / "items.json", {"eos_token_id": self.eos_token_id, "depth": self.depth,
                                         "item_ids": self.item_ids}, indent=None)

    @classmethod
    def load(cls, path: str | Path) -> SIDTrie:
        path = Path(path)
        if not (path / "trie.npz").exists():
            raise FileNotFoundError(f"{path}/trie.npz not found; write it with SIDTrie.save(path)")
        meta = json.loads((path / "items.json").read_text(encoding="utf-8"))
        with np.load(path / "trie.npz") as z:
            arrays = {k: torch.from_numpy(z[k]) for k in ("edge_token", "parent", "node_item")}
        return cls(**arrays, item_ids=meta["item_ids"], eos_token_id=meta["eos_token_id"], depth=meta["depth"])

    def subtree_max(self, item_values: torch.Tensor) -> torch.Tensor:
        """``(batch, num_items) -> (batch, num_nodes)``: each node's best value among the items whose SID passes
        through it (the root holds the row's maximum). The beam search adds an item prior with it as an exact
        lookahead: a prefix is scored by the best item it can still reach, so a prior cannot be cut off early."""
        if item_values.ndim != 2 or item_values.shape[1] != self.num_items:
            raise ValueError(f"item values of shape {tuple(item_values.shape)}: expected (batch, {self.num_items})")
        batch = item_values.shape[0]
        out = torch.full((batch, self.num_nodes), -math.inf, dtype=item_values.dtype, device=item_values.device)
        terminal = self.node_terminal.nonzero().flatten()
        out[:, terminal] = item_values[:, self.node_item[terminal]]
        parents = self._parents()
        for start, end in reversed(self._levels()[1:]):  # deepest level first: children before their parents
            out.scatter_reduce_(1, parents[start - 1:end - 1].expand(batch, -1), out[:, start:end].clone(), "amax")
        return out

    def _levels(self) -> list[tuple[int, int]]:
        """Node ranges ``[start, end)`` per level (nodes are numbered level by level; level 0 is the root)."""
        if self._level_ranges is None:
            ranges, (start, end) = [], (0, 1)
            while start < end:
                ranges.append((start, end))
                start, end = int(self.indptr[start]) + 1, int(self.indptr[end]) + 1
            self._level_ranges = ranges
        return self._level_ranges

    def _parents(self) -> torch.Tensor:
        return torch.div(self.edge_key - self.edge_token, self.key_base, rounding_mode="floor")


def _pad(sequences) -> np.ndarray:
    if isinstance(sequences, np.ndarray):
        if sequences.ndim != 2:
            raise ValueError(f"token-id array must be 2-D (items, depth), got shape {sequences.shape}")
        return sequences.astype(np.int64, copy=False)
    depth = max((len(s) for s in sequences), default=0)
    out = np.full((len(sequences), depth), _PAD, dtype=np.int64)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out


def _token_ids(tokenizer, level: int, codes: np.ndarray) -> list[int]:
    """Token ids of level `level`'s codes; raises when a SID token is missing from the tokenizer."""
    tokens = [sid_tokens([0] * level + [int(c)])[level] for c in codes]
    ids = tokenizer.convert_tokens_to_ids(tokens)
    unk = getattr(tokenizer, "unk_token_id", None)
    missing = [t for t, i in zip(tokens, ids, strict=True) if i is None or (unk is not None and i == unk)]
    if missing:
        raise ValueError(f"SID token(s) {missing[:5]} are not in the tokenizer ({len(missing)} missing); use the "
                         "checkpoint's own tokenizer, whose vocabulary the sft stage extended with the SID tokens")
    if len(set(ids)) != len(ids):
        raise ValueError(f"level {level}: distinct SID tokens share a token id; each must be a single token")
    return ids


def _build_csr(seqs: np.ndarray, lengths: np.ndarray, item_ids: list[str]) -> dict:
    """Number the trie's nodes level by level in lexicographic order; return edge tokens, parents, node items."""
    n, depth = seqs.shape
    order = np.lexsort(seqs.T[::-1])  # lexicographic, column 0 first; padding (-1) sorts before any token
    s = seqs[order]
    valid = s != _PAD
    diff = np.ones((n, depth), dtype=bool)
    diff[1:] = s[1:] != s[:-1]
    changed = np.logical_or.accumulate(diff, axis=1)  # prefix through level l differs from the previous row's
    dup = np.flatnonzero(~changed[:, -1])
    if dup.size:
        a, b = item_ids[order[dup[0] - 1]], item_ids[order[dup[0]]]
        raise ValueError(f"items {a!r} and {b!r} share a SID ({dup.size} duplicates); re-run the quantize stage")
    tokens, parents = [], []
    node_of = np.zeros((n, depth), dtype=np.int64)
    prev = np.zeros(n, dtype=np.int64)  # every row starts at the root (node 0)
    base = 1
    for level in range(depth):
        new = valid[:, level] & changed[:, level]
        node_of[:, level] = base + np.cumsum(new) - 1
        tokens.append(s[new, level])
        parents.append(prev[new])
        prev = node_of[:, level]
        base += int(new.sum())
    node_item = np.full(base, -1, dtype=np.int64)
    node_item[node_of[np.arange(n), lengths[order] - 1]] = order
    return {
        "edge_token": torch.from_numpy(np.concatenate(tokens)),
        "parent": torch.from_numpy(np.concatenate(parents)),
        "node_item": torch.from_numpy(node_item),
        "depth": depth,
    }
