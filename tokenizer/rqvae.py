"""RQ-VAE: an MLP autoencoder whose latent is quantized by vector-quantize-pytorch's ``ResidualVQ``.

Codebooks are updated by EMA, k-means initialised on the latents of all items after a short autoencoder-only
warm-up, and a code whose EMA usage falls below ``dead_code_threshold`` is re-seeded from the batch, which keeps
every level's codebook in use.

Example:
    >>> model = build_rqvae(384, QuantizeConfig(hidden_dims=[256], codebook_size=8))
    >>> recon, codes, losses = model(torch.randn(16, 384))
    >>> codes.shape
    torch.Size([16, 3])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from vector_quantize_pytorch import ResidualVQ

from .config import QuantizeConfig

logger = logging.getLogger(__name__)


class RQVAELosses(NamedTuple):
    total: Tensor
    reconstruction: Tensor
    commitment: Tensor


class Quantized(NamedTuple):
    """What a fitted quantizer says about the items: everything collision resolution and the report need."""

    codes: np.ndarray  # [n, levels] int64
    last_dist: np.ndarray  # [n, codebook_size] distance of the last residual to each last-level code
    reconstruction_mse: float  # mean squared error per embedding element


def mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """The quantizer's network; its settings have no defaults here: they live in `QuantizeConfig` (build one from a
    config with `build_rqvae`)."""

    def __init__(
        self, *, input_dim: int, latent_dim: int, hidden_dims: Sequence[int], levels: int, codebook_size: int,
        commitment_weight: float, ema_decay: float, kmeans_iters: int, dead_code_threshold: float,
    ):
        super().__init__()
        self.encoder = mlp([input_dim, *hidden_dims, latent_dim])
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), input_dim])
        self.rq = ResidualVQ(
            dim=latent_dim, num_quantizers=levels, codebook_size=codebook_size, decay=ema_decay,
            commitment_weight=commitment_weight, kmeans_init=True, kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=dead_code_threshold,
        )
        # Inputs are standardised (per-dimension mean, one global scale) before the encoder: L2-normalised
        # sentence embeddings have elements of ~0.05, and unit-scale inputs train a markedly better autoencoder.
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_std", torch.ones(()))

    @torch.no_grad()
    def fit_standardizer(self, x: Tensor) -> None:
        self.input_mean.copy_(x.mean(0))
        self.input_std.copy_((x - self.input_mean).pow(2).mean().sqrt().clamp(min=1e-8))

    def standardize(self, x: Tensor) -> Tensor:
        return (x - self.input_mean) / self.input_std

    def forward(self, x: Tensor, quantize: bool = True) -> tuple[Tensor, Tensor | None, RQVAELosses]:
        """(reconstruction in standardised units, codes [b, levels] or None when not quantizing, losses)."""
        x = self.standardize(x)
        z = self.encoder(x)
        commitment = z.new_zeros(())
        codes = None
        if quantize:
            zq, codes, commit = self.rq(z.unsqueeze(1))
            z, codes, commitment = zq.squeeze(1), codes.squeeze(1), commit.sum()
        recon = self.decoder(z)
        reconstruction = nn.functional.mse_loss(recon, x)
        return recon, codes, RQVAELosses(reconstruction + commitment, reconstruction, commitment)

    @torch.no_grad()
    def init_codebooks(self, x: Tensor) -> None:
        """k-means initialise every level on the latents (and residuals) of all of ``x``."""
        was_training = self.training
        self.train()
        self.rq(self.encoder(self.standardize(x)).unsqueeze(1))
        self.train(was_training)

    @torch.no_grad()
    def quantize(self, x: Tensor) -> Quantized:
        """Codes, last-level distances and reconstruction error (in the units of ``x``) in eval mode."""
        self.eval()
        z = self.encoder(self.standardize(x))
        zq, codes, _ = self.rq(z.unsqueeze(1))
        codes = codes.squeeze(1)
        books = self.rq.codebooks  # [levels, K, latent]
        prefix = sum((books[lv][codes[:, lv]] for lv in range(codes.shape[1] - 1)), torch.zeros_like(z))
        last_dist = torch.cdist(z - prefix, books[-1])
        recon = self.decoder(zq.squeeze(1)) * self.input_std + self.input_mean
        mse = nn.functional.mse_loss(recon, x).item()
        return Quantized(codes.cpu().numpy().astype(np.int64), last_dist.cpu().numpy(), mse)


def build_rqvae(input_dim: int, cfg: QuantizeConfig) -> RQVAE:
    return RQVAE(
        input_dim=input_dim, latent_dim=cfg.latent_dim, hidden_dims=cfg.hidden_dims, levels=cfg.levels,
        codebook_size=cfg.codebook_size, commitment_weight=cfg.commitment_weight, ema_decay=cfg.ema_decay,
        kmeans_iters=cfg.kmeans_iters, dead_code_threshold=cfg.dead_code_threshold,
    )


def load_rqvae(path: str | Path, device: str = "cpu") -> RQVAE:
    """The RQ-VAE saved by the quantize stage (``rqvae.pt``), in eval mode; ``model.quantize(x)`` re-encodes items."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = build_rqvae(ckpt["input_dim"], QuantizeConfig(**ckpt["config"])).to(device)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def train_rqvae(emb: np.ndarray, cfg: QuantizeConfig, device: str = "cpu") -> tuple[RQVAE, Quantized]:
    """Fit an RQ-VAE on the item embeddings and quantize them; seeded by ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.as_tensor(emb, dtype=torch.float32, device=device)
    model = build_rqvae(x.shape[1], cfg).to(device)
    model.fit_standardizer(x)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bar = tqdm(range(cfg.epochs), desc="rqvae", unit="epoch")
    for epoch in bar:
        quantizing = epoch >= cfg.warmup_epochs
        if epoch == cfg.warmup_epochs:
            model.init_codebooks(x)
        model.train()
        totals = torch.zeros(3)
        for batch in torch.randperm(len(x), generator=gen).to(device).split(cfg.batch_size):
            _, _, losses = model(x[batch], quantize=quantizing)
            opt.zero_grad(set_to_none=True)
            losses.total.backward()
            opt.step()
            totals += torch.stack([t.detach().cpu() for t in losses]) * len(batch) / len(x)
        bar.set_postfix(loss=f"{totals[0]:.3g}", recon=f"{totals[1]:.3g}", commit=f"{totals[2]:.3g}")
        if quantizing and (epoch + 1) % max(1, cfg.epochs // 5) == 0:
            used = [len(np.unique(c)) for c in model.quantize(x).codes.T]
            logger.info("rqvae epoch %d: recon %.4g commit %.4g codes used per level %s",
                        epoch + 1, totals[1], totals[2], used)
    return model, model.quantize(x)
