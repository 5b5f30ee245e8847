"""Item interests for tests without the MiniLM encoder: `fake_encode` embeds a text as a bag of hashed words (texts
that share words point the same way), `tiny_interests` gives every item two interests it shares with others."""

from __future__ import annotations

import zlib

import numpy as np

from genrec.explain import ItemInterests


def fake_encode(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), 32), np.float32)
    for n, text in enumerate(texts):
        for word in text.lower().split():
            out[n, zlib.crc32(word.encode()) % 32] += 1.0
    return out


def tiny_interests(ids) -> ItemInterests:
    """Two interests per item: a topic shared by every fifth item, a use case by every third."""
    return ItemInterests.build({iid: [f"topic {n % 5}", f"use case {n % 3}"] for n, iid in enumerate(ids)},
                               fake_encode)
