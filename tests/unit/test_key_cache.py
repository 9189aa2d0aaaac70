"""The API key cache: answers for ttl_s, one lookup per expiry, revocation within ttl + grace."""
from __future__ import annotations

import time

from api.auth import KeyCache
from infrastructure.keys import new_key


def test_one_lookup_per_expiry_and_revocation_within_ttl_plus_grace() -> None:
    key, _ = new_key("banking", "t")
    stored = {key.key_id: key}
    lookups: list[str] = []

    def lookup(key_id: str):  # noqa: ANN202
        lookups.append(key_id)
        return stored.get(key_id)

    cache = KeyCache(lookup, ttl_s=0.05, grace_s=0.2)
    assert cache.cached(key.key_id) == (False, None)  # never seen
    assert cache.get(key.key_id) == key and len(lookups) == 1
    assert cache.cached(key.key_id) == (True, key)
    time.sleep(0.06)  # expired
    assert cache.cached(key.key_id) == (False, None)  # the first caller refreshes...
    assert [cache.cached(key.key_id) for _ in range(50)] == [(True, key)] * 50  # ...the others wait on the old answer
    del stored[key.key_id]  # revoked meanwhile
    assert cache.get(key.key_id) is None and len(lookups) == 2
    assert cache.cached(key.key_id) == (True, None)
    time.sleep(0.06)
    assert cache.cached(key.key_id) == (False, None)
    time.sleep(0.21)  # the refresher never came back: after the grace, everyone looks it up
    assert cache.cached(key.key_id) == (False, None)
    assert cache.get(key.key_id) is None and len(lookups) == 3
