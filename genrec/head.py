"""The LM head at label positions, with the SID softmax: the one definition of how genrec scores a completion.

Constrained decoding only ever chooses among SID tokens at a SID position, so genrec trains (SFT) and optimises
(GRPO) the distribution it decodes from: at a position whose label is a SID token the softmax runs over the SID
rows of the LM head only; other positions (EOS, text) keep the full vocabulary. Only positions that have a label
are projected at all, which is most of the speed on CPU (a prompt of 60 tokens has 4 labelled positions).

`add_sid_head(model, sid_token_ids)` patches ``model.forward``; the plain forward (generation) is unchanged:
- ``model(..., labels=, sid_head=True)`` returns `SIDHeadOutput` (loss = summed NLL / num_items_in_batch or the
  label count, plus counts for token accuracy), what SFT trains on;
- ``model(..., labels=, fused_lm_head=True)`` returns TRL's fused-head output (per-token ``log_probs`` and
  ``entropy``, zero where the label is -100), what TRL's GRPOTrainer reads its policy and reference log-probs from.

Example:
    >>> add_sid_head(model, list(sid_vocab(tokenizer).values()))  # doctest: +SKIP
    >>> model(input_ids=ids, labels=labels, sid_head=True).loss  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput


@dataclass
class SIDHeadOutput(ModelOutput):
    loss: torch.Tensor | None = None
    num_tokens: torch.Tensor | None = None
    num_correct: torch.Tensor | None = None


class LabelScores(NamedTuple):
    """Per labelled position: log-probability of the label, whether it is the argmax, and (optionally) the
    entropy of the distribution it was scored under."""

    logp: torch.Tensor
    correct: torch.Tensor
    entropy: torch.Tensor | None


def label_scores(hidden, weight, labels, sid_ids=None, sid_pos=None, entropy: bool = False,
                 bias=None) -> LabelScores:
    """Scores of `labels` given `hidden` states (one row per label) and the LM head `weight` (and `bias`, if any).

    With `sid_ids` (token ids of the SID tokens) and `sid_pos` (vocab -> index in sid_ids, or -1), rows whose label
    is a SID token are scored against the SID rows of the head only.
    """
    groups = [(torch.ones_like(labels, dtype=torch.bool), weight, bias, labels)]
    if sid_ids is not None:
        pos = sid_pos[labels]
        groups = [(pos >= 0, weight[sid_ids], None if bias is None else bias[sid_ids], pos),
                  (pos < 0, weight, bias, labels)]
    logp = hidden.new_zeros(labels.shape, dtype=torch.float32)
    correct = torch.zeros_like(labels, dtype=torch.bool)
    ent = hidden.new_zeros(labels.shape, dtype=torch.float32) if entropy else None
    for rows, w, b, target in groups:
        if rows.any():
            log_probs = torch.log_softmax(F.linear(hidden[rows], w, b).float(), dim=-1)
            logp = logp.masked_scatter(rows, log_probs.gather(1, target[rows, None]).squeeze(1))
            correct = correct.masked_scatter(rows, log_probs.argmax(-1) == target[rows])
            if entropy:
                ent = ent.masked_scatter(rows, -(log_probs.exp() * log_probs).sum(-1))
    return LabelScores(logp, correct, ent)


def label_nll(hidden, weight, labels, sid_ids=None, sid_pos=None, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL and the number of top-1 hits of `labels` (see `label_scores`)."""
    scores = label_scores(hidden, weight, labels, sid_ids, sid_pos, bias=bias)
    return -scores.logp.sum(), scores.correct.sum()


def head_transform(model) -> torch.nn.Module | None:
    """What a model applies between its decoder's last hidden state and the LM head, or None (plain head).

    Qwen, Llama and most causal LMs have none; BERT-style LM heads (the ``backbone: minilm`` default model) have a
    dense + activation + LayerNorm transform, which training, GRPO and decoding must all apply alike."""
    predictions = getattr(getattr(model, "cls", None), "predictions", None)
    return getattr(predictions, "transform", None)


def _sid_index(sid_token_ids: list[int] | None, vocab: int):
    if not sid_token_ids:
        return None, None
    sid_ids = torch.tensor(sorted(sid_token_ids))
    sid_pos = torch.full((vocab,), -1, dtype=torch.long)
    sid_pos[sid_ids] = torch.arange(len(sid_ids))
    return sid_ids, sid_pos


def add_sid_head(model, sid_token_ids: list[int] | None) -> None:
    """Patch `model.forward` so that ``sid_head=True`` (SFT) and ``fused_lm_head=True`` (TRL's GRPO) score only the
    labelled positions, with the SID softmax when `sid_token_ids` are given (None: the full vocabulary everywhere).
    Without either flag the forward is the one it replaces, so generation is unchanged. Patch after TRL's own
    fused head (GRPOTrainer adds it in __init__), so this one answers first."""
    original_forward = model.forward
    sid_ids, sid_pos = _sid_index(sid_token_ids, model.get_output_embeddings().weight.shape[0])
    transform = head_transform(model)

    def forward(self, *args, sid_head=False, fused_lm_head=False, labels=None, num_items_in_batch=None, **kwargs):
        if not (sid_head or fused_lm_head):
            extra = {k: v for k, v in (("labels", labels), ("num_items_in_batch", num_items_in_batch)) if v is not None}
            return original_forward(*args, **kwargs, **extra)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != -100
        head = self.get_output_embeddings()
        device = head.weight.device
        selected = hidden[mask].to(device)
        scores = label_scores(selected if transform is None else transform(selected), head.weight,
                              targets[mask].to(device), None if sid_ids is None else sid_ids.to(device),
                              None if sid_pos is None else sid_pos.to(device), entropy=fused_lm_head, bias=head.bias)
        count = mask.sum()
        loss = -scores.logp.sum() / (num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1))
        if sid_head:
            return SIDHeadOutput(loss=loss, num_tokens=count, num_correct=scores.correct.sum())
        from trl.trainer.utils import FusedCausalLMOutput

        per_token = [hidden.new_zeros(mask.shape, dtype=torch.float32).masked_scatter(mask.to(device), x)
                     for x in (scores.logp, scores.entropy)]
        return FusedCausalLMOutput(loss=loss, log_probs=per_token[0], entropy=per_token[1], label_mask=mask)

    model.forward = forward.__get__(model)
