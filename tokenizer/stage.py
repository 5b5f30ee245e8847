"""The quantize stage: item_emb.npy -> sids.json, sid_report.json and the fitted quantizer.

The vectors quantized are, by ``quantize.input``, the embed stage's text embeddings (optionally mixed with an
embedding of each item's archetype, ``archetype_weight``) or the fused ID/text embeddings the sasrec-faerec baseline
exported (into the run's ``fused/``, or any directory); ``calibration: genair`` then adjusts them to the train
split's co-interactions (`genrec.calibrate`) before the quantizer sees them. Like every stage, this one reads
another's product as a file: it never trains the baseline itself.

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
from dataclasses import fields
from pathlib import Path

import numpy as np

from genrec.artifacts import FUSED, ITEM_EMB, SID_REPORT, SIDS, Run, read_item_embeddings
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


def _saved_config(cfg: QuantizeConfig) -> dict:
    """The config's settable fields (derived ones left out), so ``QuantizeConfig(**saved)`` rebuilds it."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.init}


def _fit_and_save(run_dir: Path, emb, cfg: QuantizeConfig):
    if cfg.method == "rkmeans":
        import joblib

        from .rkmeans import fit_rkmeans

        model, out = fit_rkmeans(emb, cfg)
        with atomic_path(run_dir / "rkmeans.joblib") as tmp:
            joblib.dump({"levels": model, "config": _saved_config(cfg)}, tmp)
        return out
    import torch

    from .rqvae import train_rqvae

    model, out = train_rqvae(emb, cfg, device=_device(cfg))
    with atomic_path(run_dir / "rqvae.pt") as tmp:
        torch.save({"state_dict": model.state_dict(), "config": _saved_config(cfg), "input_dim": int(emb.shape[1])},
                   tmp)
    return out


def input_embeddings(run: Run, cfg: QuantizeConfig) -> tuple[list[str], np.ndarray]:
    """The catalog's item ids and the vectors to quantize (rows in that order), by ``cfg.input``."""
    if cfg.input == "text":
        text = run.item_embeddings()
        return text.item_ids, text.vectors
    if cfg.input == "fused":
        source = run.fused_embeddings()
        logger.info("quantize: the fused item vectors of %s (%s)", run.path(FUSED), source.recipe.get("source", "?"))
    else:
        source = read_item_embeddings(Path(cfg.input) / ITEM_EMB)
    item_ids = [str(it["item_id"]) for it in run.items()]
    return item_ids, source.aligned(item_ids, normalize=False)


def mix_archetypes(emb: np.ndarray, archetypes: np.ndarray, rows: list[int], weight: float) -> np.ndarray:
    """normalize((1 - w) x_i + w a_i) for the items at `rows` (a_i: row k of `archetypes` for rows[k], both sides
    L2-normalised); the other items keep x_i, normalised. Example: weight 0.5 puts an item halfway (in angle)
    between its text and its archetype."""
    unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # noqa: E731
    out = unit(np.asarray(emb, dtype=np.float32))
    if rows:
        out[rows] = unit((1 - weight) * out[rows] + weight * unit(np.asarray(archetypes, dtype=np.float32)))
    return out


def with_archetypes(run: Run, item_ids: list[str], emb: np.ndarray, weight: float) -> tuple[np.ndarray, int]:
    """Mix the embedding of each item's archetype text into its vector (`mix_archetypes`); the archetypes are
    encoded with the embed stage's own model and settings (item_emb.json's recipe). Returns the vectors and how
    many items had an archetype."""
    from genrec.encoders import EmbedConfig, load_encoder

    interests = run.interests()
    texts = {n: (interests.get(iid) or {}).get("archetype") for n, iid in enumerate(item_ids)}
    texts = {n: t.strip() for n, t in texts.items() if isinstance(t, str) and t.strip()}
    if not texts:
        logger.warning("quantize: archetype_weight=%s but no item has an archetype in %s", weight, run.root)
        return mix_archetypes(emb, np.zeros((0, emb.shape[1])), [], weight), 0
    recipe = run.item_embeddings().recipe
    encoder = load_encoder(EmbedConfig(**{f.name: recipe[f.name] for f in fields(EmbedConfig) if f.name in recipe}))
    rows = sorted(texts)
    return mix_archetypes(emb, encoder.encode([texts[n] for n in rows]), rows, weight), len(rows)


def quantize_needs(cfg: QuantizeConfig) -> tuple[str, ...]:
    """Stages the quantize stage reads besides embed, for the pipeline's ``needs``: mine for archetypes."""
    return ("mine",) if cfg.archetype_weight else ()


def quantize_inputs(cfg: QuantizeConfig, run_dir: Path | None) -> list[Path] | None:
    """Files from outside the pipeline the quantize stage reads, for the pipeline's ``inputs`` (their content joins
    the fingerprint, so re-exported vectors re-run the stage): the run's fused vectors with ``input: fused``; None
    otherwise (a directory input's digest is already in the config, ``input_digest``)."""
    if cfg.input != "fused" or run_dir is None:
        return None
    return [Run(run_dir).path(FUSED) / ITEM_EMB]


def train_co_interactions(run: Run, item_ids: list[str], window: int | None):
    """Co-interaction counts of the run's **train** split (never valid or test), rows in the order of `item_ids`."""
    from genrec.calibrate import co_interaction_counts

    return co_interaction_counts(run.split("train"), {iid: n for n, iid in enumerate(item_ids)}, window)


def prepared_embeddings(run: Run, cfg: QuantizeConfig) -> tuple[list[str], np.ndarray, dict]:
    """The vectors the quantizer fits (input, archetypes, calibration) and what was done, for sid_report.json."""
    item_ids, emb = input_embeddings(run, cfg)
    info: dict = {"input": cfg.input}
    if cfg.archetype_weight:
        emb, info["archetype_items"] = with_archetypes(run, item_ids, emb, cfg.archetype_weight)
    if cfg.calibration != "none":
        from genrec.calibrate import calibrate, calibration_stats

        counts = train_co_interactions(run, item_ids, cfg.calibration_window)
        calibrated = calibrate(emb, counts, cfg, device=_device(cfg))
        info["calibration"] = {"method": cfg.calibration, **calibration_stats(emb, calibrated, counts)}
        emb = calibrated
    return item_ids, emb, info


def run_quantize(run_dir: Path, cfg: QuantizeConfig) -> None:
    """Quantize the run's item embeddings into unique SIDs and write sids.json + sid_report.json + the model."""
    run_dir = Path(run_dir)
    start = time.time()
    with _cpu_threads(cfg.cpu_threads):
        item_ids, emb, info = prepared_embeddings(Run(run_dir), cfg)
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
        extra={"collision": cfg.collision, "embedding_dim": int(emb.shape[1]), **info},
    )
    if report["unique_sids"] != len(sids):
        raise RuntimeError(f"collision resolution left {len(sids) - report['unique_sids']} duplicate SIDs")
    write_json(run_dir / SIDS, {str(iid): sid for iid, sid in zip(item_ids, sids)}, indent=None)
    write_json(run_dir / SID_REPORT, report)
    logger.info("quantize: %d items -> %d unique SIDs (%d collisions resolved by %s); codes used per level %s; "
                "reconstruction MSE %.4g; %.1fs", report["items"], report["unique_sids"], collisions, cfg.collision,
                [lv["codes_used"] for lv in report["levels"]], report["reconstruction_mse"], report["seconds"])
