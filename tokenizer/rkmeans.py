"""Residual k-means: scikit-learn ``KMeans`` per level on what the previous levels left unexplained.

Level 1 clusters the raw item embeddings, level 2 clusters each item's residual (embedding minus its level-1
centroid), and so on. No training loop and no decoder: the reconstruction is the sum of the chosen centroids.

Example:
    >>> emb = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    >>> model, out = fit_rkmeans(emb, QuantizeConfig(method="rkmeans", codebook_size=8))
    >>> out.codes.shape
    (200, 3)
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from .config import QuantizeConfig
from .rqvae import Quantized

logger = logging.getLogger(__name__)


def fit_rkmeans(emb: np.ndarray, cfg: QuantizeConfig) -> tuple[list[KMeans], Quantized]:
    """Fit one KMeans per level on the residuals; returns the fitted levels and the quantized items."""
    emb = np.asarray(emb, dtype=np.float32)
    if len(emb) < cfg.codebook_size:
        raise ValueError(f"rkmeans needs at least codebook_size={cfg.codebook_size} items, got {len(emb)}; "
                         "lower quantize.codebook_size")
    residual = emb.copy()
    levels, codes = [], []
    last_residual = residual
    for level in tqdm(range(cfg.levels), desc="rkmeans", unit="level"):
        km = KMeans(n_clusters=cfg.codebook_size, n_init=cfg.kmeans_n_init, random_state=cfg.seed + level)
        assigned = km.fit_predict(residual)
        levels.append(km)
        codes.append(assigned)
        last_residual = residual
        residual = residual - km.cluster_centers_[assigned].astype(np.float32)
        logger.info("rkmeans level %d: %d codes used, inertia %.4g", level + 1, len(np.unique(assigned)),
                    km.inertia_)
    last_dist = levels[-1].transform(last_residual)
    mse = float(np.mean(residual.astype(np.float64) ** 2))
    return levels, Quantized(np.stack(codes, axis=1).astype(np.int64), last_dist, mse)
