"""Sign-in for the human pages (report, remediation log, status): the app checks a
Microsoft Entra access token itself.

Why not App Service authentication (Easy Auth) in front: the app runs on Flex
Consumption, where Microsoft's page says "EasyAuth isn't currently supported.
Unauthenticated callers currently aren't blocked when EasyAuth is enabled"
(docs/monitoring.md cites it). A header such as ``X-MS-CLIENT-PRINCIPAL-ID`` is then only the
client's word, so nothing here reads it. A page answers a request whose
``Authorization: Bearer`` token is:
- signed by one of the tenant's published keys (the ``jwks_uri`` of the tenant's OpenID
  configuration, ``<authority>/<tenant>/v2.0/.well-known/openid-configuration``), RS256;
- issued by that tenant (``iss`` equals the configuration's ``issuer``: v2.0 tokens only,
  the app registration sets ``requestedAccessTokenVersion: 2``);
- for this app (``aud`` is its client id; v2.0 tokens always carry the client id);
- current (``exp``, ``nbf``, with one minute of clock skew);
- and held by an allowed principal: a value of ``REMEDIATION_PAGES_ALLOWED`` is among the
  token's ``roles`` (an app role) or ``groups`` (a group's object id).
Sources: Microsoft identity platform "Access tokens" (validate the signature, issuer,
audience, lifetime; "aud ... In v2.0 tokens, this value is always the client ID of the
API") and "OpenID Connect on the Microsoft identity platform" (the metadata document).

The keys are fetched once and kept for a day; a token signed by a key not yet known
(Entra rolls its keys) fetches them again, at most once every five minutes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from remediation.config import endpoint

KEYS_TTL_SECONDS = 24 * 3600
REFRESH_FLOOR_SECONDS = 300  # an unknown key fetches the set again at most this often
RETRY_SECONDS = 10  # after a failed read, the next try waits this long (no storm of reads)
LEEWAY_SECONDS = 60
MAX_TOKEN_CHARS = 16_384  # a header that long is not a token Entra issued


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a page refused a request: 401 (no valid token) or 403 (valid, not allowed)."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Tenant:
    """What the tenant publishes: who issues its tokens and the keys that sign them."""

    issuer: str
    keys: Mapping[str, Any]  # kid -> public key


def bearer(authorization: str | None) -> str | Refusal:
    """The token of an ``Authorization: Bearer`` header, or why there is none."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return Refusal(401, "sign in: send an Entra access token as 'Authorization: Bearer'")
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        return Refusal(401, "the bearer token is not a JWT")
    return token


def verify(
    token: str,
    tenant: Tenant,
    audience: str,
    allowed: Collection[str],
    now: float,
) -> Refusal | None:
    """None when the token passes every check; else the first check it failed. Pure:
    the keys and the time are arguments."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return Refusal(401, "the bearer token is not a JWT")
    if header.get("alg") != "RS256":
        return Refusal(401, "the token is not signed with RS256, as Entra signs")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in tenant.keys:
        return Refusal(401, "the token is signed by a key the tenant does not publish")
    key = tenant.keys[kid]
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=audience,
            issuer=tenant.issuer,
            # PyJWT reads the clock itself; this check takes the time as an argument.
            options={
                "require": ["exp", "iss", "aud"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidAudienceError:
        return Refusal(401, "the token is for another application (aud)")
    except jwt.InvalidIssuerError:
        return Refusal(
            401,
            "the token is not from this app's tenant, or is a v1.0 token "
            "(set requestedAccessTokenVersion to 2 in the app registration)",
        )
    except jwt.InvalidSignatureError:
        return Refusal(401, "the token's signature does not verify")
    except jwt.PyJWTError as error:
        return Refusal(401, f"the token is not valid: {type(error).__name__}")
    # azp: a v2.0 access token names the client it was issued to; an ID token for the same
    # app has the same aud and iss but no azp ("Access tokens" and "ID tokens" claims
    # references), and is not a credential for an API.
    if not claims.get("azp"):
        return Refusal(401, "not an access token (no azp): an ID token opens no page")
    expires, not_before = claims.get("exp"), claims.get("nbf")
    if not isinstance(expires, int | float) or not isinstance(not_before, int | float | None):
        return Refusal(401, "the token's exp or nbf is not a time")
    if now > expires + LEEWAY_SECONDS:
        return Refusal(401, "the token has expired: get a new one")
    if not_before is not None and now < not_before - LEEWAY_SECONDS:
        return Refusal(401, "the token is not valid yet (nbf)")
    held = {str(value).lower() for name in ("roles", "groups") for value in _list(claims, name)}
    if held & {value.lower() for value in allowed}:
        return None
    if "groups" in (claims.get("_claim_names") or {}):
        return Refusal(
            403,
            "the token lists too many groups to carry them (group overage): "
            "allow an app role instead",
        )
    return Refusal(403, "signed in, but holds none of the roles or groups the pages allow")


def _list(claims: Mapping[str, Any], name: str) -> list[Any]:
    value = claims.get(name)
    return value if isinstance(value, list) else []


class SignIn:
    """The pages' gate: reads the tenant's metadata and keys through ``fetch`` (a GET
    returning JSON), caches them, and checks each request's token."""

    def __init__(
        self,
        authority: str,
        tenant_id: str,
        audience: str,
        allowed: Collection[str],
        fetch: Callable[[str], Any],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metadata_url = (
            f"{endpoint(authority)}/{tenant_id}/v2.0/.well-known/openid-configuration"
        )
        self._audience = audience
        self._allowed = tuple(allowed)
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._tenant: Tenant | None = None
        self._fetched_at = 0.0  # when self._tenant was read (only read once it is set)
        self._tried_at: float | None = None  # when a read was last tried, failed or not

    def check(self, authorization: str | None) -> Refusal | None:
        token = bearer(authorization)
        if isinstance(token, Refusal):
            return token
        now = self._clock()
        tenant = self._tenant_for(token, now)
        if tenant is None:
            return Refusal(503, "cannot read the tenant's signing keys now: try again shortly")
        return verify(token, tenant, self._audience, self._allowed, now)

    def _tenant_for(self, token: str, now: float) -> Tenant | None:
        with self._lock:
            if self._tenant is None:
                stale = unknown = may_refresh = True
            else:
                age = now - self._fetched_at
                stale = age > KEYS_TTL_SECONDS
                unknown = _kid(token) not in self._tenant.keys
                may_refresh = age > REFRESH_FLOOR_SECONDS
            wanted = stale or (unknown and may_refresh)
            if wanted and (self._tried_at is None or now - self._tried_at >= RETRY_SECONDS):
                self._tried_at = now
                try:
                    self._tenant = self._read()
                except (OSError, ValueError, KeyError, TypeError, jwt.PyJWTError):
                    return None if stale else self._tenant
                self._fetched_at = now  # only a read that succeeded resets the day
            return None if stale and self._fetched_at != now else self._tenant

    def _read(self) -> Tenant:
        metadata = self._fetch(self._metadata_url)
        keys = jwt.PyJWKSet.from_dict(self._fetch(metadata["jwks_uri"]))
        return Tenant(
            issuer=str(metadata["issuer"]),
            keys={key.key_id: key.key for key in keys.keys if key.key_id},
        )


def _kid(token: str) -> object:
    """The token's key id as its header gives it (bearer() let only JWT-shaped text in)."""
    try:
        return jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
