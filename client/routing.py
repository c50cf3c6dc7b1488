"""Which version a request gets while a candidate takes a share of traffic.

With a routing key (a user, a session), the candidate serves the key iff
`bucket(program, key) < weight_percent * 100`. The bucket is a hash, not a
random draw, so every pod sends a key to the same version, and as the weight
grows keys only move from stable to candidate, never back.
"""

from __future__ import annotations

import hashlib
import random

BUCKETS = 10_000


def bucket(program: str, key: str) -> int:
    """The key's fixed place in [0, 10 000) for `program`; the same on every pod and in every language."""
    digest = hashlib.sha256(f"{program}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def takes_candidate(
    program: str, weight_percent: int, routing_key: str | None, rng: random.Random | None = None
) -> bool:
    """True when this request goes to the candidate: by key when there is one, else at random by weight."""
    if weight_percent <= 0:
        return False
    if weight_percent >= 100:
        return True
    if routing_key is None:
        return (rng or random).random() * 100 < weight_percent
    return bucket(program, routing_key) < weight_percent * (BUCKETS // 100)
