"""Webhooks without a network: the signature (against an implementation of the test's own), the
retry schedule, registration rules and the SSRF guard with a resolver we control."""
from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from application.webhooks import (
    ACTIVE,
    DISABLED,
    FAILING,
    RETRY_MAX_S,
    RETRY_WINDOW_S,
    after_failure,
    check_registration,
    retry_delay_s,
    sign,
    verify,
)
from domain.errors import ValidationFailed
from infrastructure.webhooks import AddressRefused, UrlGuard


@given(secret=st.text(min_size=1, max_size=40), t=st.integers(0, 2**40), body=st.binary(max_size=300))
def test_signature_is_hmac_sha256_of_t_dot_body(secret: str, t: int, body: bytes) -> None:
    header = sign(secret, t, body)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"t={t},v1={mac}"
    assert verify(secret, header, body, now_s=t)
    assert not verify(secret, header, body + b"x", now_s=t)
    assert not verify(secret + "x", header, body, now_s=t)
    assert not verify(secret, header, body, now_s=t + 301), "an old delivery replayed"


@given(attempts=st.integers(1, 200), r=st.floats(0, 0.999999))
def test_backoff_doubles_with_jitter_and_is_capped(attempts: int, r: float) -> None:
    d = retry_delay_s(attempts, r)
    ceiling = min(RETRY_MAX_S, 2 ** (attempts - 1))
    assert ceiling / 2 <= d <= ceiling


def test_failing_after_a_day_of_failures_and_410_disables() -> None:
    now = 1_000_000_000_000
    f = after_failure(ACTIVE, 0, None, now, 0.5, gone=False)
    assert (f.status, f.attempts, f.failing_since_ms) == (ACTIVE, 1, now) and f.next_attempt_at_ms > now
    status, t = ACTIVE, now
    while status == ACTIVE:  # retried, with backoff, for at least RETRY_WINDOW_S
        t = f.next_attempt_at_ms
        f = after_failure(status, f.attempts, f.failing_since_ms, t, 0.0, gone=False)
        status = f.status
    assert (t - now) / 1000 >= RETRY_WINDOW_S and status == FAILING
    assert after_failure(FAILING, 5, now, t, 0.3, gone=False).next_attempt_at_ms - t <= RETRY_MAX_S * 1000
    assert after_failure(ACTIVE, 0, None, now, 0.1, gone=True).status == DISABLED


@pytest.mark.parametrize("url, error", [
    ("http://example.com/x", "https is required"), ("https://u:p@example.com/", "credentials"),
    ("ftp://example.com/", "http(s)"), ("https:///nohost", "http(s)"), ("https://example.com/" + "a" * 3000, "2048"),
    ("https://exa mple.com/", "ASCII"), ("https://example.com/#frag", "fragment"), ("https://example.com:99999/", "valid"),
])  # fmt: skip
def test_registration_rules(url: str, error: str) -> None:
    with pytest.raises(ValidationFailed, match=None) as e:
        check_registration(url, None, None, insecure_hosts=frozenset())
    assert error in e.value.message


def test_registration_types_and_http_for_allowed_hosts() -> None:
    spec = check_registration("http://receiver.internal:8080/h", ["transfer.posted"], "d",
                              insecure_hosts=frozenset({"receiver.internal"}))  # fmt: skip
    assert spec.port == 8080 and spec.types == frozenset({"transfer.posted"})
    assert check_registration("https://x.example/", ["*"], None, insecure_hosts=frozenset()).types is None
    with pytest.raises(ValidationFailed):
        check_registration("https://x.example/", ["nope"], None, insecure_hosts=frozenset())


def test_guard_refuses_names_resolving_to_private_addresses() -> None:
    answers = {"evil.example": ["10.1.2.3"], "mixed.example": ["93.184.216.34", "127.0.0.1"],
               "ok.example": ["93.184.216.34"], "meta.example": ["169.254.169.254"], "v6.example": ["fd00::1"],
               "cgnat.example": ["100.64.0.1"], "internal.example": ["10.0.0.5"]}  # fmt: skip
    guard = UrlGuard(frozenset({"internal.example"}), resolve=lambda host, port: answers[host])
    for host in ("evil.example", "mixed.example", "meta.example", "v6.example", "cgnat.example"):
        with pytest.raises(AddressRefused):
            guard.addresses(host, 443)
    assert guard.addresses("ok.example", 443) == ["93.184.216.34"]
    assert guard.addresses("internal.example", 443) == ["10.0.0.5"], "allow-listed"
    for literal in ("127.0.0.1", "0.0.0.0", "::1", "::ffff:10.0.0.1", "224.0.0.1", "fe80::1"):
        with pytest.raises(AddressRefused):
            guard.addresses(literal, 443)
