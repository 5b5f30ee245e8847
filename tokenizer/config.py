"""Configuration of the quantize stage (one dataclass; YAML sections fill it by field name)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .collisions import COLLISION_METHODS

METHODS = ("rqvae", "rkmeans")
CALIBRATIONS = ("none", "genair")
INPUTS = ("text", "fused")  # or a directory holding item_emb.npy + item_emb.json


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
    input: str = field(
        default="text",
        metadata={"help": "Vectors to quantize: 'text' (the embed stage's item_emb.npy), 'fused' (the fused "
                          "ID/text item embeddings of the sasrec-faerec baseline, exported into the run first with "
                          "`genrec baseline sasrec-faerec --run-dir RUN --split valid --export-embeddings RUN/fused`: "
                          "collaborative-semantic SIDs) or a directory holding item_emb.npy + item_emb.json for every "
                          "catalog item (e.g. another --export-embeddings DIR). The vectors' content is part of the "
                          "fingerprint."},
    )
    archetype_weight: float = field(
        default=0.0,
        metadata={"help": "input=text: mix each item's archetype (the mine stage's interests.jsonl) into its "
                          "vector: normalize((1 - w) text + w archetype), the archetype encoded with the embed "
                          "stage's model; items without one keep their text vector; 0 disables."},
    )
    calibration: str = field(
        default="none",
        metadata={"help": "'genair': adjust the vectors to the train split's co-interactions before quantizing "
                          "(genrec.calibrate: GenAIR's loss, a pull on co-interacted pairs, an anchor to the input); "
                          "'none' quantizes them as they are."},
    )
    calibration_gamma: float = field(
        default=4.0, metadata={"help": "genair: gamma of w_ij = exp(-gamma s_ij) (higher spares co-interacted pairs)."}
    )
    calibration_weight: float = field(
        default=1.0, metadata={"help": "genair: weight of GenAIR's spreading loss (the anchor's weight is 1)."}
    )
    calibration_pull: float = field(
        default=0.3, metadata={"help": "genair: weight of the pull between co-interacted items (s_ij-weighted)."}
    )
    calibration_window: int | None = field(
        default=None,
        metadata={"help": "genair: count pairs at most this many positions apart in a user's train sequence; "
                          "None counts every pair of the sequence."},
    )
    calibration_steps: int = field(default=300, metadata={"help": "genair: optimisation steps."})
    calibration_batch_size: int = field(
        default=256, metadata={"help": "genair: co-interacted pairs (and as many random items) per step."}
    )
    calibration_lr: float = field(default=1e-3, metadata={"help": "genair: AdamW learning rate."})
    calibration_hidden: int = field(default=256, metadata={"help": "genair: hidden width of the residual map."})
    input_digest: str = field(
        init=False, default="",
        metadata={"help": "Derived: hash of the input directory's item_emb.npy when input is a directory, so new "
                          "vectors re-run the stage."},
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
        self._check_inputs()
        self._check_calibration()

    def _check_inputs(self):
        if self.input not in INPUTS:
            from genrec.artifacts import ITEM_EMB

            path = Path(self.input) / ITEM_EMB
            if not path.is_file():
                raise ValueError(f"quantize.input={self.input!r}: use 'text', 'fused' or a directory holding "
                                 "item_emb.npy + item_emb.json (genrec baseline sasrec-faerec --export-embeddings DIR)")
            self.input_digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        if not 0.0 <= self.archetype_weight < 1.0:
            raise ValueError(f"quantize.archetype_weight={self.archetype_weight}: use a value in [0, 1)")
        if self.archetype_weight and self.input != "text":
            raise ValueError("quantize.archetype_weight needs input=text (archetypes are encoded by the text "
                             "encoder); set it to 0 or use input: text")

    def _check_calibration(self):
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"quantize.calibration={self.calibration!r}: use one of {CALIBRATIONS}")
        if min(self.calibration_gamma, self.calibration_weight, self.calibration_pull) < 0:
            raise ValueError("quantize: calibration_gamma, calibration_weight and calibration_pull must be >= 0")
        if min(self.calibration_steps, self.calibration_batch_size, self.calibration_hidden) < 1:
            raise ValueError("quantize: calibration_steps, calibration_batch_size and calibration_hidden must be >= 1")
        if self.calibration_lr <= 0 or (self.calibration_window is not None and self.calibration_window < 1):
            raise ValueError("quantize: calibration_lr must be > 0 and calibration_window >= 1 (or None: whole "
                             "sequences)")
