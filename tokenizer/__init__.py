"""The SID stage (installed as genrec.tokenizer): RQ-VAE and residual k-means quantizers, collision resolution.

Example:
    >>> from genrec.tokenizer import QuantizeConfig, run_quantize
    >>> run_quantize(Path("runs/demo"), QuantizeConfig(codebook_size=64))  # doctest: +SKIP
"""

from .collisions import COLLISION_METHODS, count_collisions, resolve_collisions
from .config import METHODS, QuantizeConfig
from .metrics import level_usage, sid_report
from .stage import run_quantize

__all__ = [
    "COLLISION_METHODS",
    "METHODS",
    "QuantizeConfig",
    "count_collisions",
    "level_usage",
    "resolve_collisions",
    "run_quantize",
    "sid_report",
]
