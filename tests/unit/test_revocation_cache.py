"""The verified-credential cache: a revocation that lands during a database read wins over that read."""

from __future__ import annotations

from gateway.authn.revocation import CredentialCache, announce_revocation
from gateway.settings import Settings


def _cache(tmp_path) -> CredentialCache:
    return CredentialCache(Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}"))


def test_revocation_during_lookup_is_not_overwritten(tmp_path):
    cache = _cache(tmp_path)
    before = cache.generation  # the verifier reads this, then goes to the database ...
    cache.evict("key-1")  # ... while a revocation of that key arrives
    cache.put("pal_x", "h", "principal", "key-1", generation=before)
    assert cache.get("pal_x") is None
    cache.put("pal_x", "h", "principal", "key-1", generation=cache.generation)  # a read that began after it
    assert cache.get("pal_x").value == "principal"


async def test_marker_file_from_another_process_empties_the_cache(tmp_path):
    cache = _cache(tmp_path)
    cache.put("pal_x", "h", "principal", "key-1", generation=cache.generation)
    assert cache.get("pal_x") is not None
    await announce_revocation(cache.settings, "key-1")  # what `palisade keys revoke` does without a gateway
    assert cache.get("pal_x") is None
