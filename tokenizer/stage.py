"""The quantize stage: item_emb.npy -> sids.json, sid_report.json and the fitted quantizer.

Outputs in the run directory:
- ``sids.json``: ``{item_id: [c1, c2, c3]}``, unique per item (plain ints; token names live in genrec.sid)
- ``sid_report.json``: items, unique SIDs, collisions before resolution, per-level usage and perplexity,
  reconstruction MSE, seconds, method
- ``rqvae.pt`` (state dict + config) or ``rkmeans.joblib`` (the per-level scikit-learn KMeans)

Example:
    >>> run_quantize(Path("runs/industrial-cpu"), QuantizeConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from genrec.artifacts import SID_REPORT, SIDS, Run
from genrec.io import atomic_path, write_json

from .collisions import count_collisions, resolve_collisions
from .config import QuantizeConfig
from .metrics import sid_report

logger = logging.getLogger(__name__)


def _device(cfg: QuantizeConfig) -> str:
    import torch

    return cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def _cpu_threads(n: int) -> Iterator[None]:
    """Limit torch and the BLAS/OpenMP pools to ``n`` threads for the block (0: leave them alone)."""
    import torch
    from threadpoolctl import threadpool_limits

    if n == 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def _fit_and_save(run_dir: Path, emb, cfg: QuantizeConfig):
    if cfg.method == "rkmeans":
        import joblib

        from .rkmeans import fit_rkmeans

        model, out = fit_rkmeans(emb, cfg)
        with atomic_path(run_dir / "rkmeans.joblib") as tmp:
            joblib.dump({"levels": model, "config": asdict(cfg)}, tmp)
        return out
    import torch

    from .rqvae import train_rqvae

    model, out = train_rqvae(emb, cfg, device=_device(cfg))
    with atomic_path(run_dir / "rqvae.pt") as tmp:
        torch.save({"state_dict": model.state_dict(), "config": asdict(cfg), "input_dim": int(emb.shape[1])}, tmp)
    return out


def run_quantize(run_dir: Path, cfg: QuantizeConfig) -> None:
    """Quantize the run's item embeddings into unique SIDs and write sids.json + sid_report.json + the model."""
    run_dir = Path(run_dir)
    start = time.time()
    embeddings = Run(run_dir).item_embeddings()
    item_ids, emb = embeddings.item_ids, embeddings.vectors
    if len(item_ids) < cfg.codebook_size:
        raise ValueError(f"{len(item_ids)} items cannot fill codebooks of {cfg.codebook_size} codes; lower "
                         "quantize.codebook_size (a few items per code at least)")
    logger.info("quantize: %d items x %d dims with %s, %d levels x %d codes", len(item_ids), emb.shape[1],
                cfg.method, cfg.levels, cfg.codebook_size)
    with _cpu_threads(cfg.cpu_threads):
        out = _fit_and_save(run_dir, emb, cfg)
    collisions = count_collisions(out.codes)
    sids = resolve_collisions(out.codes, out.last_dist, method=cfg.collision)
    report = sid_report(
        sids, [cfg.codebook_size] * cfg.levels, collisions_before=collisions,
        reconstruction_mse=out.reconstruction_mse, seconds=time.time() - start, method=cfg.method,
        extra={"collision": cfg.collision, "embedding_dim": int(emb.shape[1])},
    )
    if report["unique_sids"] != len(sids):
        raise RuntimeError(f"collision resolution left {len(sids) - report['unique_sids']} duplicate SIDs")
    write_json(run_dir / SIDS, {str(iid): sid for iid, sid in zip(item_ids, sids)}, indent=None)
    write_json(run_dir / SID_REPORT, report)
    logger.info("quantize: %d items -> %d unique SIDs (%d collisions resolved by %s); codes used per level %s; "
                "reconstruction MSE %.4g; %.1fs", report["items"], report["unique_sids"], collisions, cfg.collision,
                [lv["codes_used"] for lv in report["levels"]], report["reconstruction_mse"], report["seconds"])
