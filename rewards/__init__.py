"""GRPO reward functions (installed as genrec.rewards): plain functions `(prompts, completions, **columns) -> list[float]`.

`REWARDS` maps a name to a reward function; names that are not in it are resolved as dotted import paths.
"""

REWARDS: dict = {}
