"""``genrec serve --backend vllm``: the same API served through vLLM (GPU only; the ``vllm`` extra).

Needs a CUDA GPU and ``pip install -e '.[vllm]'``; on CPU, or without vllm, loading fails with a message that says
so, and the default backend (transformers, genrec's own trie beam search) is the one to use.

How it ranks: genrec's beam search runs step by step over vLLM. Each step sends every live hypothesis (prompt token
ids + the SID tokens so far) as a one-token request whose ``extra_args`` name the saved catalog trie, so
genrec.decoding.vllm's `TrieVLLMLogitsProcessor` masks every token that does not continue a catalog SID; the
engine runs with ``logprobs_mode="processed_logprobs"`` so the returned log-probabilities are taken after that mask,
i.e. normalised over the tokens the trie allows at that step, and the top `beam` hypotheses per query go on, as in
`genrec.decoding.beam.trie_beam_search`. Prefix caching keeps the repeated prompts cheap.

Scores are therefore log-probabilities under the constrained distribution, not the transformers backend's
``softmax="sid"`` or ``"full"`` scores, and rankings can differ where those normalisers do; `DecodeConfig.softmax`
and `bf16` do not apply (vLLM's ``--dtype`` does). Loading goes through `load_recommender` (the one loading path,
for the prompt settings, tokenizer, SID map, titles and trie) before vLLM loads the weights itself.

Example:
    $ pip install -e '.[vllm,serve]'
    $ genrec serve runs/demo/checkpoints/sft --backend vllm
"""

from __future__ import annotations

import atexit
import heapq
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from genrec.decoding.beam import DecodeConfig
from genrec.decoding.trie import Recommendation, SIDTrie

logger = logging.getLogger(__name__)

# step(rows) -> per row {token id: log-probability of it next}; a row is (prompt token ids, SID tokens so far)
Step = Callable[[list[tuple[list[int], list[int]]]], list[dict[int, float]]]


def constrained_beam_search(step: Step, prompts: Sequence[list[int]], trie: SIDTrie, *,
                            beam: int) -> list[Recommendation]:
    """Up to `beam` distinct catalog items per prompt, best first, scored by `step`'s log-probabilities.

    Same search as `trie_beam_search`: at each of ``depth + 1`` steps every live hypothesis is extended by the
    tokens the trie allows, a hypothesis that takes EOS at a complete SID is finished, and the best `beam`
    unfinished ones per prompt go on. Tokens missing from a row's `step` answer count as impossible.

    Example:
        >>> constrained_beam_search(step, [[5, 6, 7]], trie, beam=20)[0].items  # doctest: +SKIP
    """
    live: list[list[tuple[float, tuple[int, ...]]]] = [[(0.0, ())] for _ in prompts]
    finished: list[list[tuple[float, int]]] = [[] for _ in prompts]
    for _ in range(trie.depth + 1):
        rows = [(p, score, seq) for p, hyps in enumerate(live) for score, seq in hyps]
        if not rows:
            break
        width = max(len(seq) for _, _, seq in rows)
        generated = torch.tensor([list(seq) + [-1] * (width - len(seq)) for _, _, seq in rows], dtype=torch.int64)
        state, _ = trie.walk(generated.reshape(len(rows), width).to(trie.edge_key.device))
        row_of, tokens = (t.tolist() for t in trie.allowed(state))
        logprobs = step([(list(prompts[p]), list(seq)) for p, _, seq in rows])
        grown: list[list[tuple[float, tuple[int, ...]]]] = [[] for _ in prompts]
        for r, token in zip(row_of, tokens):
            p, score, seq = rows[r]
            lp = logprobs[r].get(token, -math.inf)
            if not math.isfinite(lp):
                continue
            if token == trie.eos_token_id:
                node = int(state[r])
                if node >= 0 and bool(trie.node_terminal[node]):
                    finished[p].append((score + lp, int(trie.node_item[node])))
            else:
                grown[p].append((score + lp, (*seq, token)))
        live = [heapq.nlargest(beam, hyps) for hyps in grown]
    out = []
    for done in finished:
        best = heapq.nlargest(beam, done)
        out.append(Recommendation([trie.item_ids[i] for _, i in best], [s for s, _ in best]))
    return out


def max_fanout(trie: SIDTrie) -> int:
    """Most tokens the trie allows after any prefix (children plus EOS): the log-probs vLLM must return per step."""
    return int((trie.indptr[1:] - trie.indptr[:-1]).max()) + 1


class VLLMRecommender:
    """A `Recommender` look-alike for the server whose ``recommend`` runs `constrained_beam_search` over `step`.

    `base` is a loaded `Recommender` (prompts, tokenizer, SIDs, titles, trie); its own model is not used.
    """

    def __init__(self, base, step: Step):
        self.base, self.step = base, step
        self.sid_strings, self.titles, self.sids = base.sid_strings, base.titles, base.sids
        self.interests = base.interests
        self._warned_content = False

    def recommend(self, histories: Sequence[Sequence[str]], decode: DecodeConfig | None = None, *,
                  k: int | None = None, progress: bool = False) -> list[Recommendation]:
        from genrec.tasks import encode_prompt

        decode = decode or DecodeConfig()
        weight = self.base.resolved_content_weight(decode)
        if weight and self.base.content is not None and not self._warned_content:
            logger.warning("the vLLM backend ranks by the model alone: content_weight=%s is not applied (the "
                           "transformers backend applies it)", weight)
            self._warned_content = True
        prompts = [encode_prompt(self.base.tokenizer, self.base.prompt(h)) for h in histories]
        recs = constrained_beam_search(self.step, prompts, self.base.trie, beam=decode.beam)
        k = k or decode.beam
        return [Recommendation(r.items[:k], r.scores[:k]) for r in recs]


def vllm_step(llm, trie_dir: str | Path, width: int) -> Step:
    """One beam-search step on a vLLM engine built with genrec.decoding.vllm's processor (see `load_vllm_recommender`)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from genrec.decoding.vllm import trie_extra_args

    params = SamplingParams(max_tokens=1, temperature=1.0, logprobs=width, detokenize=False,
                            extra_args=trie_extra_args(trie_dir))

    def step(rows):
        outs = llm.generate([TokensPrompt(prompt_token_ids=prompt + generated) for prompt, generated in rows],
                            params, use_tqdm=False)
        return [{tok: lp.logprob for tok, lp in out.outputs[0].logprobs[0].items()} for out in outs]

    return step


def load_vllm_recommender(checkpoint: str | Path, *, dtype: str = "auto", **engine_args) -> VLLMRecommender:
    """The checkpoint served through vLLM (CUDA only). `engine_args` go to ``vllm.LLM``.

    Example:
        >>> rec = load_vllm_recommender("runs/demo/checkpoints/sft")  # doctest: +SKIP
    """
    if not torch.cuda.is_available():
        raise RuntimeError("--backend vllm needs a CUDA GPU; on this machine use --backend transformers")
    try:
        import vllm
    except ImportError as e:
        raise ImportError("--backend vllm needs vLLM: pip install -e '.[vllm]' (or use --backend transformers)") from e
    from genrec.decoding.vllm import PROCESSOR
    from genrec.recommender import load_recommender

    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # the trie processor implements the V1 interface
    base = load_recommender(checkpoint, device="cpu")
    base.model = None  # vLLM loads the weights itself; keep only prompts, tokenizer, SIDs, titles and trie
    trie_dir = tempfile.mkdtemp(prefix="genrec-trie-")
    atexit.register(shutil.rmtree, trie_dir, ignore_errors=True)
    base.trie.save(trie_dir)
    width = max_fanout(base.trie)
    llm = vllm.LLM(model=str(checkpoint), dtype=dtype, logits_processors=[PROCESSOR], seed=0,
                   logprobs_mode="processed_logprobs", max_logprobs=width, enable_prefix_caching=True,
                   **engine_args)
    logger.info("vLLM backend: %d items, up to %d allowed tokens per step", base.trie.num_items, width)
    return VLLMRecommender(base, vllm_step(llm, trie_dir, width))
