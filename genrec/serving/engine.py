"""The model in its own process (an engine process, as vLLM runs one): `ProcessRecommender`.

In one process the beam search (Python-heavy at small model sizes) and the server's event loop take turns on one
interpreter lock, so under load each slows the other. `ProcessRecommender` loads the checkpoint through
`load_recommender` in a child process and forwards `recommend` calls over a pipe; the server keeps only what it
needs to answer and validate requests (the SID map and titles, `load_catalog`), so the weights load once. The
micro-batcher's single model thread blocks on the pipe, which releases the lock, while the child computes.

Example:
    >>> rec = ProcessRecommender("runs/demo/checkpoints/sft", device="cpu")  # doctest: +SKIP
    >>> rec.recommend([["12", "40"]], DecodeConfig(beam=20), k=10)[0].items  # doctest: +SKIP
    >>> rec.close()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

from genrec.checkpoint import load_catalog, load_item_interests
from genrec.sid import sid_string

logger = logging.getLogger(__name__)


def _engine(conn, checkpoint: str, device: str | None, dtype: str, threads: int | None) -> None:
    """The child: load the model, say ready (or why not), then answer (histories, decode, k) until None."""
    try:
        import torch

        from genrec.recommender import load_recommender

        if threads:
            torch.set_num_threads(threads)
        recommender = load_recommender(checkpoint, device=device, dtype=dtype)
        conn.send(("ready", None))
    except Exception as e:  # noqa: BLE001 - the parent reports it; the child has nothing else to do
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while (message := conn.recv()) is not None:
        histories, decode, k = message
        try:
            conn.send(("ok", recommender.recommend(histories, decode, k=k)))
        except Exception as e:  # noqa: BLE001 - one bad batch must not end the engine
            logger.exception("engine: a batch failed")
            conn.send(("error", f"{type(e).__name__}: {e}"))


class ProcessRecommender:
    """`Recommender.recommend` answered by a child process; `sid_strings`, `titles` and `interests` live in this
    process."""

    def __init__(self, checkpoint: str | Path, *, device: str | None = None, dtype: str = "float32",
                 threads: int | None = None):
        sids, self.titles = load_catalog(checkpoint)
        self.interests = load_item_interests(checkpoint)  # explanations are made here, beside the answers
        self.sid_strings = {iid: sid_string(codes) for iid, codes in sids.items()}
        context = multiprocessing.get_context("spawn")  # a clean interpreter: no inherited threads or locks
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_engine, args=(child, str(checkpoint), device, dtype, threads),
                                        name="genrec-engine", daemon=True)
        self._process.start()
        child.close()
        status, detail = self._conn.recv()
        if status != "ready":
            self._process.join(5)
            raise RuntimeError(f"the engine process could not load {checkpoint}: {detail}")
        logger.info("engine process %d serves %s", self._process.pid, checkpoint)

    def recommend(self, histories, decode=None, *, k=None, progress=False):
        """Forward one batch to the engine and wait for its answer (called from the model thread only)."""
        if not self._process.is_alive():
            raise RuntimeError("the engine process has stopped; restart genrec serve")
        self._conn.send((histories, decode, k))
        status, payload = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"the engine failed on a batch: {payload}")
        return payload

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(None)
            self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
