"""The token endpoint: OIDC metadata and client-credentials tokens (``oid``, ``appid``,
``tid``; ``roles`` for Defender for Endpoint's API), signed with the plane's key."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import jwt

from localazure.defender import MDE_AUDIENCE
from localazure.machinery import Params, Query, Response, json_response, route

if TYPE_CHECKING:
    from localazure.server import LocalAzure


def _oidc(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    base = f"{plane.url}/{p['tenant']}"
    return json_response(
        200,
        {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "issuer": f"{base}/v2.0",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "response_types_supported": ["code", "id_token", "token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "tenant_region_scope": "EU",
        },
    )


def _token(plane: LocalAzure, p: Params, q: Query, form: Any, who: str) -> Response:
    client_id = (form or {}).get("client_id", "")
    principal = plane.estate.principals.get(client_id)
    if principal is None or form.get("client_secret") != principal.secret:
        return json_response(
            401,
            {
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided.",
            },
        )
    scope = form.get("scope", "")
    audience = scope.split(" ")[0].removesuffix("/.default")
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": audience,
        "iss": f"{plane.url}/{p['tenant']}/",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "oid": principal.object_id,
        "appid": principal.client_id,
        "tid": p["tenant"],
        "sub": principal.object_id,
    }
    if audience == MDE_AUDIENCE and principal.app_roles:
        # An app-only token carries the application permissions granted to the app for
        # that API in its ``roles`` claim (Microsoft identity platform access-token
        # claims reference; the WindowsDefenderATP permissions of
        # learn.microsoft.com/defender-endpoint/api/exposed-apis-create-app-webapp). With
        # none granted the claim is absent (unconfirmed: Entra may refuse the token).
        claims["roles"] = list(principal.app_roles)
    token = jwt.encode(claims, plane._signing_key, algorithm="HS256")
    return json_response(
        200,
        {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": token},
    )


ROUTES = (
    route("GET", r"/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration", _oidc, "login/metadata"),
    route("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", _token, "login/token"),
)  # fmt: skip
