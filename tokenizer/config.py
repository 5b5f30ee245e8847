"""Configuration of the quantize stage (one dataclass; YAML sections fill it by field name)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .collisions import COLLISION_METHODS

METHODS = ("rqvae", "rkmeans")


@dataclass
class QuantizeConfig:
    """Settings of the quantize stage: item embeddings -> unique Semantic IDs.

    Example:
        >>> QuantizeConfig(method="rkmeans", codebook_size=64).levels
        3
    """

    method: str = field(
        default="rqvae",
        metadata={"help": "'rqvae' (MLP autoencoder around vector-quantize-pytorch's ResidualVQ) or 'rkmeans' "
                          "(scikit-learn k-means on the residuals of the raw embeddings, level by level)."},
    )
    levels: int = field(default=3, metadata={"help": "Codebooks (SID tokens before collision resolution)."})
    codebook_size: int = field(default=256, metadata={"help": "Codes per level."})
    latent_dim: int = field(default=32, metadata={"help": "rqvae: dimension of the quantized latent."})
    hidden_dims: list[int] = field(
        default_factory=lambda: [512, 256],
        metadata={"help": "rqvae: hidden layer widths of the encoder MLP (the decoder mirrors them)."},
    )
    epochs: int = field(default=60, metadata={"help": "rqvae: passes over the items."})
    warmup_epochs: int = field(
        default=10,
        metadata={"help": "rqvae: epochs that train the autoencoder alone before the codebooks are k-means "
                          "initialised on its latents (0 initialises on the untrained encoder)."},
    )
    batch_size: int = field(default=512, metadata={"help": "rqvae: items per optimisation step."})
    lr: float = field(default=1e-3, metadata={"help": "rqvae: AdamW learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "rqvae: AdamW weight decay."})
    commitment_weight: float = field(
        default=0.25, metadata={"help": "rqvae: weight of the commitment loss (encoder output -> its codes)."}
    )
    ema_decay: float = field(
        default=0.95, metadata={"help": "rqvae: EMA decay of the codebook updates (lower adapts faster)."}
    )
    kmeans_iters: int = field(
        default=25, metadata={"help": "rqvae: k-means iterations of the codebook initialisation."}
    )
    dead_code_threshold: float = field(
        default=0.5,
        metadata={"help": "rqvae: a code whose EMA usage per batch falls below this is re-seeded from the batch "
                          "(vector-quantize-pytorch threshold_ema_dead_code); 0 disables it."},
    )
    kmeans_n_init: int = field(
        default=1, metadata={"help": "rkmeans: k-means restarts per level (the best inertia is kept)."}
    )
    collision: str = field(
        default="reassign",
        metadata={"help": "'reassign' (move colliding items to free last-level codes of their prefix; fixed "
                          "length) or 'append' (TIGER: one extra level numbering the items sharing a SID)."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of every random choice; CPU runs are deterministic."})
    device: str | None = field(default=None, metadata={"help": "Torch device; None picks cuda when available."})
    cpu_threads: int = field(
        default=1,
        metadata={"help": "CPU threads for fitting (torch and scikit-learn); the matrices are small, so one thread "
                          "is fastest and never slows down under contention; 0 keeps the process default."},
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"quantize.method={self.method!r}: use one of {METHODS}")
        if self.collision not in COLLISION_METHODS:
            raise ValueError(f"quantize.collision={self.collision!r}: use one of {COLLISION_METHODS}")
        if self.levels < 1 or self.codebook_size < 2:
            raise ValueError(f"quantize.levels={self.levels}, codebook_size={self.codebook_size}: "
                             "use levels >= 1 and codebook_size >= 2")
        self.hidden_dims = [int(h) for h in self.hidden_dims]
        if self.latent_dim < 1 or any(h < 1 for h in self.hidden_dims):
            raise ValueError("quantize.latent_dim and every quantize.hidden_dims entry must be >= 1")
        if self.epochs < 1 or self.batch_size < 1 or not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"quantize: epochs={self.epochs}, warmup_epochs={self.warmup_epochs}, "
                             f"batch_size={self.batch_size}; use epochs >= 1, 0 <= warmup_epochs < epochs, "
                             "batch_size >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.commitment_weight < 0:
            raise ValueError("quantize: lr must be > 0, weight_decay and commitment_weight >= 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"quantize.ema_decay={self.ema_decay}: use a value in [0, 1), e.g. 0.8 or 0.99")
        if self.kmeans_iters < 1 or self.kmeans_n_init < 1 or self.dead_code_threshold < 0 or self.cpu_threads < 0:
            raise ValueError("quantize: kmeans_iters and kmeans_n_init must be >= 1, dead_code_threshold and "
                             "cpu_threads >= 0")
