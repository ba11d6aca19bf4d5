from __future__ import annotations

from datetime import UTC, datetime

from iotcloud.services.auth_cache import AuthCache

EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_live_for_the_ttl() -> None:
    clock = Ticker()
    cache: AuthCache[str] = AuthCache(5, clock=clock)
    cache.put("t1", 1, EXPIRES, "alice", cache.epoch)
    assert cache.get("t1") == ("alice", EXPIRES)
    clock.now = 5
    assert cache.get("t1") is None


def test_dropping_a_user_drops_all_their_tokens_only() -> None:
    cache: AuthCache[str] = AuthCache(5, clock=Ticker())
    for token, user in (("a1", 1), ("a2", 1), ("b1", 2)):
        cache.put(token, user, EXPIRES, f"user{user}", cache.epoch)
    cache.drop_user(1)
    assert cache.get("a1") is None
    assert cache.get("a2") is None
    assert cache.get("b1") == ("user2", EXPIRES)


def test_a_read_that_raced_a_revocation_is_not_stored() -> None:
    cache: AuthCache[str] = AuthCache(5, clock=Ticker())
    epoch = cache.epoch  # a request starts reading the token from the database ...
    cache.drop_token("t1")  # ... while a logout revokes it
    cache.put("t1", 1, EXPIRES, "alice", epoch)
    assert cache.get("t1") is None


def test_size_is_bounded_and_zero_ttl_disables() -> None:
    cache: AuthCache[int] = AuthCache(5, max_entries=2, clock=Ticker())
    for n in range(3):
        cache.put(f"t{n}", n, EXPIRES, n, cache.epoch)
    assert cache.get("t0") is None
    assert cache.get("t2") == (2, EXPIRES)
    off: AuthCache[int] = AuthCache(0, clock=Ticker())
    off.put("t", 1, EXPIRES, 1, off.epoch)
    assert off.get("t") is None
