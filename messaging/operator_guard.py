"""Who may act through a worker's web forms, and from where (the operator actions of the
saga's page: orchestrator/engine/operator_views.py).

Actions change money and stock, so they are off unless the worker's environment sets
SAGA_OPERATOR_TOKEN (`Guard.from_env` is None otherwise). When on, a POST is admitted
only if all of these hold; a refusal (`Refused`, answered 403) changes nothing and says
why:

- **Origin.** A browser names the page a POST comes from in its `Origin` header (else its
  `Referer`): it must be this worker itself (its canonical URL; a loopback one also as
  127.0.0.1, localhost or [::1] with its port) or one of SAGA_OPERATOR_ORIGINS (e.g. the
  reverse proxy's `https://ops.example.com`). A request naming neither is only a
  program's: it must then carry the token as `Authorization: Bearer`, which a page of
  another site cannot set on a plain form post.
- **The operator token**, as the form's `token` field or `Authorization: Bearer`,
  compared in constant time (`hmac.compare_digest`). A Bearer header, if sent, is always
  checked.
- **Signed tokens** (`Guard.sign`, `Guard.verify`): HMAC-SHA256 keyed by the operator
  token over a purpose, an expiry, a nonce and the fields it is bound to (the saga id and
  the action; for a confirmation also the operator and the reason). The saga's page puts
  one in each form (CSRF: a page of another site cannot read it), and the confirmation
  step's button carries a one-time one (`OneTime`), so the secret itself is never
  written into a page and a confirmation cannot be replayed on this worker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

TOKEN_ENV = "SAGA_OPERATOR_TOKEN"
ORIGINS_ENV = "SAGA_OPERATOR_ORIGINS"
MIN_TOKEN_LENGTH = 16  # characters; `python -c "import secrets; print(secrets.token_urlsafe())"`
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
DEFAULT_PORTS = {"http": 80, "https": 443}


class Refused(Exception):
    """A request the guard does not admit; its message says why (403)."""


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of a URL, lower-cased, without the scheme's default port;
    None if it has no scheme or host (e.g. the `null` origin of a sandboxed page)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host:
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    shown_port = "" if port is None or port == DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{shown_port}"


def allowed_origins(canonical_url: str, extra: Sequence[str] = ()) -> frozenset[str]:
    """The worker's own origin (and, when it is a loopback address, the other loopback
    names of it) plus the `extra` ones. Raises ValueError for an extra one that is no
    origin."""
    own = origin_of(canonical_url)
    if own is None:
        raise ValueError(f"the worker's URL {canonical_url!r} has no origin")
    origins = {own}
    parts = urlsplit(own)
    host = parts.hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        suffix = f":{parts.port}" if parts.port else ""
        origins.update(f"{parts.scheme}://{name}{suffix}" for name in LOOPBACK_HOSTS)
    for value in extra:
        origin = origin_of(value)
        if origin is None:
            raise ValueError(f"{ORIGINS_ENV}: {value!r} is not an origin like https://host[:port]")
        origins.add(origin)
    return frozenset(origins)


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, if there is one."""
    value = headers.get("Authorization", "")
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass(frozen=True)
class Guard:
    """The operator token and the origins POSTs may come from, of one worker."""

    token: bytes = field(repr=False)
    origins: frozenset[str]

    @classmethod
    def from_env(cls, canonical_url: str, environ: Mapping[str, str] | None = None) -> Guard | None:
        """The worker's guard, or None when SAGA_OPERATOR_TOKEN is unset or empty (actions
        off). Raises ValueError for a token shorter than MIN_TOKEN_LENGTH or a bad
        SAGA_OPERATOR_ORIGINS, so that a worker never runs with a guessable token."""
        env = os.environ if environ is None else environ
        token = env.get(TOKEN_ENV, "").strip()
        if not token:
            return None
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"{TOKEN_ENV} has {len(token)} characters, at least {MIN_TOKEN_LENGTH}: "
                "make one with `python -c 'import secrets; print(secrets.token_urlsafe())'`"
            )
        extra = [o for o in env.get(ORIGINS_ENV, "").replace(",", " ").split() if o]
        return cls(token.encode(), allowed_origins(canonical_url, extra))

    # ---- where from ----

    def check_origin(self, headers: Mapping[str, str]) -> None:
        """Refuse a POST from a page of another origin, and one naming no origin that
        does not carry the token as a Bearer header (see the module)."""
        origin = headers.get("Origin")
        named = "Origin"
        if origin is None and headers.get("Referer"):
            origin, named = headers["Referer"], "Referer"
        if origin is None:
            if bearer(headers) is None:
                raise Refused(
                    "the request names no Origin or Referer: a browser's form sends one; a "
                    "program sends the operator token as 'Authorization: Bearer TOKEN'"
                )
            return
        if origin_of(origin) not in self.origins:
            raise Refused(
                f"the request comes from {origin!r} ({named}), not from this worker: "
                f"only {', '.join(sorted(self.origins))} may ask (and {ORIGINS_ENV} lists more)"
            )

    # ---- who ----

    def token_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.token)

    def check_token(self, presented: str | None) -> None:
        """Refuse a missing or wrong operator token."""
        if not presented:
            raise Refused(
                "no operator token: type it in the form (or send 'Authorization: Bearer TOKEN')"
            )
        if not self.token_matches(presented):
            raise Refused("wrong operator token")

    def check_bearer(self, headers: Mapping[str, str]) -> str | None:
        """A Bearer token, if sent, must be the operator token; returns it."""
        presented = bearer(headers)
        if presented is not None:
            self.check_token(presented)
        return presented

    # ---- signed tokens ----

    def sign(self, purpose: str, bound: Sequence[str], expires: int, nonce: str) -> str:
        """`EXPIRES.NONCE.MAC`: valid until `expires` (Unix seconds) for `purpose` and
        exactly the `bound` values."""
        return f"{expires}.{nonce}.{self._mac(purpose, bound, expires, nonce)}"

    def issue(self, purpose: str, bound: Sequence[str], now: float, lifetime: int) -> str:
        """A new signed token, with a random nonce, valid for `lifetime` seconds."""
        return self.sign(purpose, bound, int(now) + lifetime, secrets.token_urlsafe(12))

    def verify(self, signed: str | None, purpose: str, bound: Sequence[str], now: float) -> Signed:
        """The token's expiry and nonce if it was signed here for `purpose` and `bound`
        and has not expired; else Refused."""
        what = "confirmation" if purpose == "confirm" else "form"
        if not signed:
            raise Refused(f"the {what} carries no token: open the saga's page and start again")
        expires_text, _, rest = signed.partition(".")
        nonce, _, mac = rest.partition(".")
        if not expires_text.isdigit() or not nonce or not mac:
            raise Refused(f"the {what}'s token is malformed: open the saga's page again")
        expires = int(expires_text)
        expected = self._mac(purpose, bound, expires, nonce)
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            raise Refused(
                f"the {what}'s token is not valid for this saga and action (forged, changed, "
                "or signed with another operator token): open the saga's page again"
            )
        if now > expires:
            raise Refused(f"the {what} has expired: open the saga's page and start again")
        return Signed(expires, nonce)

    def _mac(self, purpose: str, bound: Sequence[str], expires: int, nonce: str) -> str:
        message = json.dumps([purpose, expires, nonce, *bound]).encode()  # unambiguous
        digest = hmac.new(self.token, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Signed:
    expires: int
    nonce: str


class OneTime:
    """Nonces of one-time tokens used on this worker, each remembered until it expires."""

    def __init__(self) -> None:
        self.used: dict[str, int] = {}

    def take(self, token: Signed, now: float) -> bool:
        """True the first time a (valid, unexpired) token is taken, False after."""
        self.used = {nonce: expires for nonce, expires in self.used.items() if expires >= now}
        if token.nonce in self.used:
            return False
        self.used[token.nonce] = token.expires
        return True
