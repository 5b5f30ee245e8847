"""GRPO reward functions (installed as genrec.rewards): plain functions `(prompts, completions, **columns) -> list[float]`.

TRL's GRPOTrainer calls each reward as ``f(prompts=..., completions=..., completion_ids=..., **columns)`` with one
value per completion for every dataset column (and every extra field a `rollout_func` returns), plus
``trainer_state``, ``log_extra`` and ``log_metric``; the rewards here ignore what they do not use. Columns read:
``target_sid`` (SID string of the true next item) and, for ``rank``, ``beam_rank`` (0 = best beam; optional).

`REWARDS` maps a name to a reward function or to a ``get_*_reward`` factory; `get_reward` resolves a name (or a
dotted path ``package.module:function``) and calls a factory with the given parameters.

Example:
    >>> rewards = [get_reward("hit"), get_reward("rank"), get_reward("prefix", curve="sqrt", hit_credit=0.0)]
    >>> rewards[0](prompts=["p"], completions=["<a_1><b_2>[SEP]"], target_sid=["<a_1><b_2>"])
    [1.0]
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from .interest import get_interest_reward, interest_reward_from_interests, interest_vectors
from .sid_rewards import (
    completion_codes,
    completion_sid,
    get_prefix_reward,
    get_valid_reward,
    group_ranks,
    hit_reward,
    rank_reward,
)

REWARDS: dict[str, Callable] = {
    "hit": hit_reward,
    "rank": rank_reward,
    "prefix": get_prefix_reward,
    "interest": get_interest_reward,
    "valid": get_valid_reward,
}

__all__ = [
    "REWARDS", "completion_codes", "completion_sid", "get_interest_reward", "get_prefix_reward", "get_reward",
    "get_valid_reward", "group_ranks", "hit_reward", "interest_reward_from_interests", "interest_vectors",
    "rank_reward",
]


def is_reward(obj) -> bool:
    """Whether `obj` is a reward function (takes `completions`) rather than a factory that builds one."""
    try:
        return "completions" in inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False


def _import(path: str):
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module or not attr:
        raise ImportError(path)
    try:
        return getattr(importlib.import_module(module), attr)
    except AttributeError:
        raise ImportError(path) from None


def get_reward(name: str, **params) -> Callable:
    """The reward called `name` in `REWARDS`, else the object at dotted path `name` (``pkg.mod:func`` or
    ``pkg.mod.func``). A factory (``get_*_reward``) is called with `params`; a plain reward takes none.

    Example:
        >>> get_reward("hit") is hit_reward, get_reward("genrec.rewards:rank_reward") is rank_reward
        (True, True)
        >>> get_reward("prefix", curve=[0.3, 0.6]).__name__
        'prefix_reward'
    """
    obj = REWARDS.get(name)
    if obj is None:
        try:
            obj = _import(name)
        except ImportError as e:
            if isinstance(e, ModuleNotFoundError) and e.name and not name.startswith(e.name):
                raise  # the module exists but one of its own imports is missing
            raise ValueError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)} or give a dotted path "
                             "'package.module:function' to a reward function or factory") from None
    if is_reward(obj):
        if params:
            raise ValueError(f"reward {name!r} takes no parameters, got {sorted(params)}; drop them, or use a "
                             f"parametrised reward ({', '.join(k for k, v in REWARDS.items() if not is_reward(v))})")
        return obj
    if not callable(obj):
        raise ValueError(f"{name!r} is a {type(obj).__name__}, not a reward function or factory")
    try:
        inspect.signature(obj).bind(**params)
    except TypeError as e:
        raise ValueError(f"reward {name!r}: {e}; its parameters are {inspect.signature(obj)}") from None
    return obj(**params)
