"""Who may act through the web forms, and from where (messaging/operator_guard.py): the
operator token, the origin of a POST, the signed CSRF and one-time confirmation tokens."""

from __future__ import annotations

import hmac
import re

import pytest

from messaging import operator_guard as g
from messaging.operator_guard import Guard, OneTime, Refused

TOKEN = "correct-horse-battery-staple"
WORKER = "http://127.0.0.1:7400"
NOW = 1_800_000_000.0


def guard(**env: str) -> Guard:
    made = Guard.from_env(WORKER, {"SAGA_OPERATOR_TOKEN": TOKEN, **env})
    assert made is not None
    return made


# ---- on or off ----


@pytest.mark.parametrize("environ", [{}, {"SAGA_OPERATOR_TOKEN": ""}, {"SAGA_OPERATOR_TOKEN": " "}])
def test_actions_are_off_without_a_token(environ: dict[str, str]) -> None:
    assert Guard.from_env(WORKER, environ) is None


def test_a_short_token_stops_the_worker_rather_than_guard_it() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Guard.from_env(WORKER, {"SAGA_OPERATOR_TOKEN": "secret"})


def test_the_token_is_not_shown_by_repr() -> None:
    assert TOKEN not in repr(guard())


# ---- origins ----


def test_a_loopback_worker_is_its_own_origin_under_every_loopback_name() -> None:
    assert guard().origins == {
        "http://127.0.0.1:7400",
        "http://localhost:7400",
        "http://[::1]:7400",
    }


def test_a_named_worker_is_only_its_own_origin_plus_the_listed_ones() -> None:
    made = Guard.from_env(
        "http://orch-1.internal:6066",
        {
            "SAGA_OPERATOR_TOKEN": TOKEN,
            "SAGA_OPERATOR_ORIGINS": "https://ops.example.com, https://OPS2.example.com:443",
        },
    )
    assert made is not None
    assert made.origins == {
        "http://orch-1.internal:6066",
        "https://ops.example.com",
        "https://ops2.example.com",
    }


def test_a_listed_origin_that_is_no_origin_stops_the_worker() -> None:
    with pytest.raises(ValueError, match="SAGA_OPERATOR_ORIGINS"):
        guard(SAGA_OPERATOR_ORIGINS="ops.example.com")


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:7400/sagas/x?format=html", "http://127.0.0.1:7400"),
        ("HTTP://LocalHost:7400", "http://localhost:7400"),
        ("https://ops.example.com:443/a", "https://ops.example.com"),
        ("http://ops.example.com:80", "http://ops.example.com"),
        ("http://[::1]:7400/", "http://[::1]:7400"),
        ("null", None),
        ("file:///etc/passwd", None),
        ("http://host:notaport", None),
        ("", None),
    ],
)
def test_origin_of(url: str, origin: str | None) -> None:
    assert g.origin_of(url) == origin


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://127.0.0.1:7400"},
        {"Origin": "http://localhost:7400"},
        {"Referer": "http://127.0.0.1:7400/sagas/s1?format=html"},
        {"Authorization": f"Bearer {TOKEN}"},  # a program: no browser, no origin
    ],
)
def test_requests_from_this_worker_are_admitted(headers: dict[str, str]) -> None:
    guard().check_origin(headers)


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"Origin": "http://evil.example"}, "'http://evil.example' (Origin), not from this"),
        ({"Origin": "http://127.0.0.1:7401"}, "not from this worker"),  # another port
        ({"Origin": "https://127.0.0.1:7400"}, "not from this worker"),  # another scheme
        ({"Origin": "null"}, "'null' (Origin)"),  # a sandboxed page, a data: URL
        ({"Referer": "http://evil.example/page"}, "(Referer)"),
        # The Origin is what the browser says; a Referer cannot vouch for another one.
        ({"Origin": "http://evil.example", "Referer": "http://127.0.0.1:7400/"}, "(Origin)"),
        ({}, "names no Origin or Referer"),
        ({"Authorization": "Basic abc"}, "names no Origin or Referer"),
    ],
)
def test_requests_from_elsewhere_are_refused(headers: dict[str, str], why: str) -> None:
    with pytest.raises(Refused, match=re.escape(why)):
        guard().check_origin(headers)


def test_a_listed_origin_is_admitted() -> None:
    guard(SAGA_OPERATOR_ORIGINS="https://ops.example.com").check_origin(
        {"Origin": "https://ops.example.com"}
    )


# ---- the operator token ----


def test_the_token_must_be_presented_and_right() -> None:
    checked = guard()
    checked.check_token(TOKEN)
    for missing in (None, ""):
        with pytest.raises(Refused, match="no operator token"):
            checked.check_token(missing)
    for wrong in (TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "x" * len(TOKEN)):
        with pytest.raises(Refused, match="wrong operator token"):
            checked.check_token(wrong)


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(g.hmac, "compare_digest", spy)
    assert not guard().token_matches("wrong")
    assert compared == [(b"wrong", TOKEN.encode())]


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (f"Bearer {TOKEN}", TOKEN),
        (f"bearer   {TOKEN} ", TOKEN),
        ("Bearer", None),
        ("Bearer ", None),
        (f"Basic {TOKEN}", None),
        ("", None),
    ],
)
def test_bearer(header: str, token: str | None) -> None:
    assert g.bearer({"Authorization": header}) == token


def test_a_bearer_header_if_sent_is_checked() -> None:
    checked = guard()
    assert checked.check_bearer({}) is None
    assert checked.check_bearer({"Authorization": f"Bearer {TOKEN}"}) == TOKEN
    with pytest.raises(Refused, match="wrong operator token"):
        checked.check_bearer({"Authorization": "Bearer guessed-it-wrong-sorry"})


# ---- signed tokens ----

BOUND = ("saga-1", "abort", "ops-alice", "stuck since the outage")


def test_a_signed_token_is_valid_for_what_it_was_signed_for() -> None:
    checked = guard()
    signed = checked.issue("confirm", BOUND, NOW, 300)
    verified = checked.verify(signed, "confirm", BOUND, NOW + 299)
    assert verified.expires == int(NOW) + 300 and verified.nonce in signed


@pytest.mark.parametrize(
    ("purpose", "bound"),
    [
        ("form", BOUND),  # a form's token is no confirmation
        ("confirm", ("saga-2", *BOUND[1:])),  # another saga
        ("confirm", (BOUND[0], "retry", *BOUND[2:])),  # another action
        ("confirm", (*BOUND[:2], "ops-mallory", BOUND[3])),  # another operator
        ("confirm", (*BOUND[:3], "another reason")),  # another reason
        ("confirm", BOUND[:3]),  # fewer values
        ("confirm", ("saga-1", "abort", "ops-alice\x00stuck since the outage")),  # joined
    ],
)
def test_a_signed_token_is_bound_to_its_purpose_and_values(
    purpose: str, bound: tuple[str, ...]
) -> None:
    checked = guard()
    signed = checked.issue("confirm", BOUND, NOW, 300)
    with pytest.raises(Refused, match="not valid for this saga and action"):
        checked.verify(signed, purpose, bound, NOW)


def test_a_token_signed_with_another_operator_token_is_refused() -> None:
    other = Guard.from_env(WORKER, {"SAGA_OPERATOR_TOKEN": "another-token-of-20-chars"})
    assert other is not None
    signed = other.issue("confirm", BOUND, NOW, 300)
    with pytest.raises(Refused, match="not valid"):
        guard().verify(signed, "confirm", BOUND, NOW)


def test_an_expired_token_is_refused_and_its_expiry_cannot_be_changed() -> None:
    checked = guard()
    signed = checked.issue("confirm", BOUND, NOW, 300)
    with pytest.raises(Refused, match="expired"):
        checked.verify(signed, "confirm", BOUND, NOW + 301)
    _expires, nonce, mac = signed.split(".")
    with pytest.raises(Refused, match="not valid"):
        checked.verify(f"{int(NOW) + 9999}.{nonce}.{mac}", "confirm", BOUND, NOW + 301)


@pytest.mark.parametrize("signed", [None, "", "garbage", "12.nonce", "x.nonce.mac", "..."])
def test_a_missing_or_malformed_token_is_refused(signed: str | None) -> None:
    with pytest.raises(Refused, match=r"carries no token|malformed"):
        guard().verify(signed, "form", BOUND[:2], NOW)


def test_a_confirmation_is_taken_once_and_forgotten_once_expired() -> None:
    checked = guard()
    used = OneTime()

    def confirmation(at: float) -> g.Signed:
        return checked.verify(checked.issue("confirm", BOUND, at, 300), "confirm", BOUND, at)

    first, second = confirmation(NOW), confirmation(NOW)
    assert used.take(first, NOW)
    assert not used.take(first, NOW + 10)
    assert used.take(second, NOW + 10)  # another confirmation of the same action
    later = confirmation(NOW + 400)
    assert used.take(later, NOW + 400)
    assert set(used.used) == {later.nonce}  # the expired ones are forgotten
