"""SID-matching rewards: exact hit, MiniOneRec's rank penalty, prefix partial credit, catalog validity.

Every reward takes TRL's keyword call ``f(prompts=..., completions=..., completion_ids=..., **columns)`` and
returns one float per completion. The true next item comes from the dataset column ``target_sid`` (a SID string,
repeated for the completions of a prompt). Completions are read by `completion_codes`: the leading run of SID
tokens, so trailing EOS/pad text or a second SID the model ran on into is ignored.

Example:
    >>> hit_reward(prompts=["p", "p"], completions=["<a_1><b_2>", "<a_1><b_3>[SEP]"], target_sid=["<a_1><b_2>"] * 2)
    [1.0, 0.0]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from genrec.sid import LEVEL_LETTERS, SID_TOKEN_RE, parse_sid, sid_string

_LEADING_SIDS = re.compile(rf"\s*(?:{SID_TOKEN_RE.pattern}\s*)+")
CURVES = ("linear", "sqrt")


def completion_text(completion) -> str:
    """The generated text of a completion: a string, or the last message's content of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise ValueError(f"a completion should be a string or a list of chat messages, got {type(completion).__name__}")


def completion_codes(completion) -> list[int] | None:
    """Codes of the SID a completion starts with, or None when it does not start with level ``a``.

    Takes the leading run of SID tokens (whitespace between them allowed) up to the first token that is not the
    next level, so EOS/pad text and a run-on second SID are dropped.

    Example:
        >>> completion_codes("<a_1><b_2><c_3>[SEP][PAD]"), completion_codes("<a_1><b_2><a_9>"), completion_codes("x")
        ([1, 2, 3], [1, 2], None)
    """
    run = _LEADING_SIDS.match(completion_text(completion))
    if run is None:
        return None
    tokens = SID_TOKEN_RE.findall(run.group(0))
    n = 0
    while n < len(tokens) and n < len(LEVEL_LETTERS) and tokens[n][1] == LEVEL_LETTERS[n]:
        n += 1
    return parse_sid("".join(tokens[:n])) if n else None


def completion_sid(completion) -> str | None:
    """The canonical SID string a completion starts with (see `completion_codes`), or None."""
    codes = completion_codes(completion)
    return None if codes is None else sid_string(codes)


def target_codes(target_sid, n: int, reward: str) -> list[list[int]]:
    """The `target_sid` column as code lists, checked: one SID string per completion."""
    if target_sid is None:
        raise ValueError(f"reward {reward!r} needs a `target_sid` dataset column (the SID string of the true next "
                         "item, e.g. '<a_12><b_7><c_200>'); add it to the GRPO dataset")
    if isinstance(target_sid, str) or len(target_sid) != n:
        raise ValueError(f"reward {reward!r}: `target_sid` should hold one SID string per completion ({n}), got "
                         f"{target_sid!r:.200}")
    try:
        return [parse_sid(t) for t in target_sid]
    except (TypeError, ValueError) as e:
        raise ValueError(f"reward {reward!r}: bad `target_sid` value ({e}); the column must hold SID strings like "
                         "'<a_12><b_7><c_200>'") from None


def group_ranks(prompts: Sequence, beam_rank: Sequence[int] | None = None, targets: Sequence | None = None
                ) -> list[list[tuple[int, int]]]:
    """Completions split into prompt groups, as ``[[(index, rank), ...], ...]``.

    A group is a run of consecutive completions with equal prompt (and target); with `beam_rank` given, a rank
    already seen in the current group starts a new one (two equal prompts back to back). The rank is `beam_rank`
    when given (0 = best beam; any order within a group), else the position within the group.

    Example:
        >>> group_ranks(["p", "p", "q"])
        [[(0, 0), (1, 1)], [(2, 0)]]
        >>> group_ranks(["p", "p", "p"], beam_rank=[1, 0, 1])
        [[(0, 1), (1, 0)], [(2, 1)]]
    """
    if prompts is None:
        raise ValueError("group rewards need `prompts` to find each prompt's completions; call them as TRL does, "
                         "f(prompts=..., completions=..., **columns)")
    n = len(prompts)
    if beam_rank is not None:
        if len(beam_rank) != n or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0
                                          for r in beam_rank):
            raise ValueError(f"`beam_rank` should hold one non-negative int per completion ({n}), got "
                             f"{list(beam_rank)!r:.200}")
    groups: list[list[tuple[int, int]]] = []
    for i in range(n):
        same = i > 0 and prompts[i] == prompts[i - 1] and (targets is None or targets[i] == targets[i - 1])
        if same and beam_rank is not None:
            same = all(beam_rank[i] != r for _, r in groups[-1])
        if same:
            groups[-1].append((i, beam_rank[i] if beam_rank is not None else len(groups[-1])))
        else:
            groups.append([(i, beam_rank[i] if beam_rank is not None else 0)])
    return groups


def hit_reward(prompts=None, completions=(), target_sid=None, **kwargs) -> list[float]:
    """1.0 when the completion's SID is the target's (column `target_sid`), else 0.0.

    Example:
        >>> hit_reward(prompts=["p"], completions=["<a_1><b_2> "], target_sid=["<a_1><b_2>"])
        [1.0]
    """
    targets = target_codes(target_sid, len(completions), "hit")
    return [float(completion_codes(c) == t) for c, t in zip(completions, targets)]


def rank_reward(prompts=None, completions=(), target_sid=None, beam_rank=None, **kwargs) -> list[float]:
    """MiniOneRec's rank penalty: in a group whose completions include the target, a wrong item at beam rank i
    gets ``-a_i / sum_j a_j`` with ``a_i = 1/log2(i+2)`` (j over the group's G ranks); the hit and every
    completion of a group without a hit get 0. Ranks come from column `beam_rank` when present, else from the
    position in the group (the genrec rollout returns beams best first).

    The group must be whole in one call: in TRL, `per_device_train_batch_size * steps_per_generation` must be a
    multiple of `num_generations` (TRL splits the generation batch across processes before scoring).

    Example (4 beams, hit at rank 2; a = 1, .631, .5, .431, sum 2.562):
        >>> [round(r, 4) for r in rank_reward(prompts=["p"] * 4, completions=["<a_0>", "<a_1>", "<a_2>", "<a_3>"],
        ...                                   target_sid=["<a_2>"] * 4)]
        [-0.3904, -0.2463, 0.0, -0.1681]
    """
    targets = target_codes(target_sid, len(completions), "rank")
    if prompts is None or len(prompts) != len(completions):
        raise ValueError("reward 'rank' needs `prompts` with one entry per completion to find each prompt's group")
    hits = [completion_codes(c) == t for c, t in zip(completions, targets)]
    rewards = [0.0] * len(completions)
    for group in group_ranks(prompts, beam_rank, targets):
        if not any(hits[i] for i, _ in group):
            continue
        size = max(len(group), 1 + max(r for _, r in group))
        total = sum(1.0 / math.log2(j + 2) for j in range(size))
        for i, r in group:
            if not hits[i]:
                rewards[i] = -1.0 / math.log2(r + 2) / total
    return rewards


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading codes of `a` and `b` are equal."""
    m = 0
    while m < len(a) and m < len(b) and a[m] == b[m]:
        m += 1
    return m


class PrefixReward:
    """Built by `get_prefix_reward`; picklable."""

    def __init__(self, curve: str | tuple[float, ...], hit_credit: float):
        self.curve, self.hit_credit = curve, hit_credit
        self.__name__ = "prefix_reward"

    def credit(self, matched: int, levels: int) -> float:
        """Credit of a wrong item whose first `matched` codes equal the target's (of `levels` codes)."""
        if matched <= 0:
            return 0.0
        if self.curve == "linear":
            return matched / levels
        if self.curve == "sqrt":
            return math.sqrt(matched / (levels + 1))
        return float(self.curve[min(matched, len(self.curve)) - 1])

    def __call__(self, prompts=None, completions=(), target_sid=None, **kwargs) -> list[float]:
        targets = target_codes(target_sid, len(completions), "prefix")
        rewards = []
        for completion, target in zip(completions, targets):
            codes = completion_codes(completion)
            if codes == target:
                rewards.append(float(self.hit_credit))
            elif codes is None:
                rewards.append(0.0)
            else:  # a wrong SID that extends the target matches all its levels; it still ranks below a hit
                rewards.append(self.credit(min(common_prefix(codes, target), len(target) - 1), len(target)))
        return rewards


def get_prefix_reward(curve: str | Sequence[float] = "linear", hit_credit: float = 1.0) -> PrefixReward:
    """Partial credit for a wrong item by m, its count of leading codes equal to the target's (L levels).

    `curve`: ``"linear"`` gives m/L; ``"sqrt"`` gives sqrt(m/(L+1)) (GREAM's table: .5 / .707 / .866 for
    m = 1 / 2 / 3 at L = 3); a list gives ``curve[m-1]`` (matches past its end get its last entry). m = 0 gives
    0. An exact hit gets `hit_credit` (default 1.0, above any wrong item's credit); 0.0 makes the reward shape
    wrong items only, next to `hit`.

    Example (target <a_1><b_2><c_3>):
        >>> f = get_prefix_reward("linear")
        >>> f(prompts=["p"] * 3, completions=["<a_1><b_2><c_3>", "<a_1><b_2><c_9>", "<a_9><b_2><c_3>"],
        ...   target_sid=["<a_1><b_2><c_3>"] * 3)
        [1.0, 0.6666666666666666, 0.0]
    """
    if isinstance(curve, str):
        if curve not in CURVES:
            raise ValueError(f"prefix reward curve {curve!r} is unknown; use one of {list(CURVES)} or a list of "
                             "credits for 1, 2, ... matched levels, e.g. [0.2, 0.5]")
    else:
        credits = tuple(curve)
        if not credits or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in credits):
            raise ValueError(f"prefix reward curve {curve!r}: give a non-empty list of numbers, the credits for 1, 2, "
                             "... matched levels, e.g. [0.2, 0.5]")
        if any(b < a for a, b in zip(credits, credits[1:])):
            raise ValueError(f"prefix reward curve {list(credits)} decreases; more matched levels should never earn "
                             "less, e.g. [0.2, 0.5]")
        curve = credits
    if not isinstance(hit_credit, int | float) or isinstance(hit_credit, bool):
        raise ValueError(f"prefix reward hit_credit should be a number (1.0, or 0.0 to shape wrong items only), got "
                         f"{hit_credit!r}")
    return PrefixReward(curve, float(hit_credit))


class ValidReward:
    """Built by `get_valid_reward`; picklable."""

    def __init__(self, catalog: frozenset[str], penalty: float):
        self.catalog, self.penalty = catalog, penalty
        self.__name__ = "valid_reward"

    def __call__(self, prompts=None, completions=(), **kwargs) -> list[float]:
        return [0.0 if completion_sid(c) in self.catalog else self.penalty for c in completions]


def get_valid_reward(catalog_sids, penalty: float = -1.0) -> ValidReward:
    """`penalty` for a completion that does not start with a catalog SID (possible with unconstrained sampling),
    0.0 otherwise. `catalog_sids`: the SID strings of all items (any iterable).

    Example:
        >>> f = get_valid_reward({"<a_1><b_2>"})
        >>> f(prompts=["p", "p", "p"], completions=["<a_1><b_2>[SEP]", "<a_1><b_3>", "hello"])
        [0.0, -1.0, -1.0]
    """
    if isinstance(catalog_sids, str) or not catalog_sids:
        raise ValueError("valid reward needs catalog_sids: a non-empty set of SID strings such as "
                         "{'<a_12><b_7><c_200>', ...} (every item's SID)")
    try:
        catalog = frozenset(sid_string(parse_sid(s)) for s in catalog_sids)
    except (TypeError, ValueError) as e:
        raise ValueError(f"valid reward catalog_sids: {e}; pass SID strings, e.g. sid_string(codes) per item") from None
    if not isinstance(penalty, int | float) or isinstance(penalty, bool):
        raise ValueError(f"valid reward penalty should be a number (e.g. -1.0), got {penalty!r}")
    return ValidReward(catalog, float(penalty))
