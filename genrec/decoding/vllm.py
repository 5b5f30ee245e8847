"""vLLM adapter: the SID trie as a logits processor of vLLM's V1 engine (vllm>=0.22,<=0.31, optional).

vLLM builds engine-level logits processors itself (possibly in worker processes), so the trie travels as a
directory written by `SIDTrie.save`, named per request in ``SamplingParams.extra_args``; requests without it are
left untouched. ``vllm`` is imported only when `TrieVLLMLogitsProcessor` is first accessed.

Example:
    >>> trie.save("runs/demo/trie")  # doctest: +SKIP
    >>> llm = LLM(model="runs/demo/checkpoints/sft", logits_processors=[PROCESSOR])  # doctest: +SKIP
    >>> args = trie_extra_args("runs/demo/trie")  # doctest: +SKIP
    >>> params = SamplingParams(max_tokens=trie.depth + 1, extra_args=args)  # doctest: +SKIP
    >>> llm.generate(prompts, params)  # doctest: +SKIP

Model Runner V2 (``VLLM_USE_V2_MODEL_RUNNER=1``, the default in later vLLM releases) has a different
logits-processor interface; run with ``VLLM_USE_V2_MODEL_RUNNER=0`` there.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from genrec.decoding.trie import SIDTrie

TRIE_ARG = "genrec_trie"
PROCESSOR = "genrec.decoding.vllm:TrieVLLMLogitsProcessor"  # what `LLM(logits_processors=[...])` accepts

_TRIES: dict[tuple[str, str], SIDTrie] = {}


def trie_extra_args(path: str | Path) -> dict:
    """``SamplingParams.extra_args`` that constrain a request to the catalog saved at `path`."""
    return {TRIE_ARG: str(Path(path).resolve())}


def load_trie(path: str, device: torch.device | str) -> SIDTrie:
    """A saved trie on `device`, loaded once per process."""
    key = (path, str(device))
    if key not in _TRIES:
        _TRIES[key] = SIDTrie.load(path).to(device)
    return _TRIES[key]


class TrieBatchMasker:
    """The vLLM-independent part: which batch rows are constrained, and masking them all at once.

    Rows are vLLM's persistent-batch indices; each constrained row keeps a reference to its live list of
    output tokens, so a step rebuilds nothing but a small ``(rows, depth + 1)`` tensor of generated tokens.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.rows: dict[int, tuple[SIDTrie, list[int]]] = {}

    def add(self, index: int, extra_args: dict | None, output_tok_ids: list[int]) -> None:
        path = (extra_args or {}).get(TRIE_ARG)
        if path is None:
            self.rows.pop(index, None)
        else:
            self.rows[index] = (load_trie(path, self.device), output_tok_ids)

    def remove(self, index: int) -> None:
        self.rows.pop(index, None)

    def move(self, src: int, dst: int, swap: bool) -> None:
        a, b = self.rows.pop(src, None), self.rows.pop(dst, None)
        if a is not None:
            self.rows[dst] = a
        if swap and b is not None:
            self.rows[src] = b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Mask, in place, every constrained row to the tokens its trie allows next."""
        by_trie: dict[int, list[int]] = {}
        for index, (trie, _) in self.rows.items():
            by_trie.setdefault(id(trie), []).append(index)
        for indices in by_trie.values():
            trie = self.rows[indices[0]][0]
            width = trie.depth + 1  # a row that went further is DONE (or DEAD) by then
            outputs = [self.rows[index][1][:width] for index in indices]
            generated = torch.tensor([out + [-1] * (width - len(out)) for out in outputs], dtype=torch.int64)
            state, _ = trie.walk(generated.to(logits.device))
            sub_rows, tokens = trie.allowed(state)
            row_index = torch.tensor(indices, dtype=torch.int64, device=logits.device)
            rows = row_index[sub_rows]
            kept = logits[rows, tokens]
            logits.index_fill_(0, row_index, -math.inf)
            logits[rows, tokens] = kept
        return logits


def _make_processor_class():
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    class TrieVLLMLogitsProcessor(LogitsProcessor):
        """Constrains requests whose ``extra_args`` name a saved trie (see `trie_extra_args`)."""

        @classmethod
        def validate_params(cls, sampling_params) -> None:
            path = (sampling_params.extra_args or {}).get(TRIE_ARG)
            if path is not None and not (Path(path) / "trie.npz").exists():
                raise ValueError(f"extra_args[{TRIE_ARG!r}]={path!r} has no trie.npz; write it with SIDTrie.save")

        def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
            self.masker = TrieBatchMasker(device)

        def is_argmax_invariant(self) -> bool:
            return False  # it changes which token is the argmax

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            if not batch_update:
                return
            for index in batch_update.removed:
                self.masker.remove(index)
            for index, params, *_, output_tok_ids in batch_update.added:  # (index, params, [prompt ids,] outputs)
                self.masker.add(index, getattr(params, "extra_args", None), output_tok_ids)
            for src, dst, direction in batch_update.moved:
                self.masker.move(src, dst, swap=direction == MoveDirectionality.SWAP)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            return self.masker.apply(logits) if self.masker.rows else logits

    TrieVLLMLogitsProcessor.__module__ = __name__  # pickled by reference, resolved by the module __getattr__
    TrieVLLMLogitsProcessor.__qualname__ = "TrieVLLMLogitsProcessor"
    return TrieVLLMLogitsProcessor


def __getattr__(name: str):
    if name == "TrieVLLMLogitsProcessor":
        cls = _make_processor_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
