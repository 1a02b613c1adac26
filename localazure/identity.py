"""The token endpoint: OIDC metadata, the signing keys, and client-credentials tokens
(``oid``, ``tid``; ``roles`` for Defender for Endpoint's API and for app registrations),
signed RS256 with the plane's key.

Token versions, as Entra issues them (Microsoft identity platform, "Access tokens"): a
Microsoft API (ARM, Defender for Endpoint) gets a v1.0 token (``iss``
``<authority>/<tenant>/``, ``appid``, ``aud`` the resource URI); an app registration with
``requestedAccessTokenVersion: 2`` gets v2.0 (``iss`` ``<authority>/<tenant>/v2.0``,
``azp``, and "aud ... In v2.0 tokens, this value is always the client ID of the API").
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from localazure.defender import MDE_AUDIENCE
from localazure.machinery import Params, Query, Response, json_response, route

GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")

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
            "jwks_uri": f"{base}/discovery/v2.0/keys",
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
    resource = scope.split(" ")[0].removesuffix("/.default")
    now = int(time.time())
    tenant = p["tenant"]
    application = _registered_api(resource)
    claims: dict[str, Any] = {
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "oid": principal.object_id,
        "tid": tenant,
        "sub": principal.object_id,
    }
    if application and plane.api_token_version == 2:
        claims |= {
            "aud": application,
            "iss": f"{plane.url}/{tenant}/v2.0",
            "azp": principal.client_id,
            "ver": "2.0",
        }
    else:
        claims |= {
            "aud": resource,
            "iss": f"{plane.url}/{tenant}/",
            "appid": principal.client_id,
            "ver": "1.0",
        }
    # An app-only token carries the application permissions (app roles) granted to the
    # app for that API in its ``roles`` claim (Microsoft identity platform access-token
    # claims reference; the WindowsDefenderATP permissions of
    # learn.microsoft.com/defender-endpoint/api/exposed-apis-create-app-webapp). With
    # none granted the claim is absent (unconfirmed: Entra may refuse the token).
    roles = (
        principal.app_roles
        if resource == MDE_AUDIENCE
        else principal.api_roles.get(application, [])
    )
    if roles and (resource == MDE_AUDIENCE or application):
        claims["roles"] = list(roles)
    token = plane.sign(claims)
    return json_response(
        200,
        {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": token},
    )


def _registered_api(resource: str) -> str:
    """The client id of an app registration named by ``api://<client id>`` or the bare
    client id; "" for a Microsoft API's URI (https://management.azure.com, ...)."""
    client_id = resource.removeprefix("api://")
    return client_id if GUID.match(client_id) else ""


def _keys(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    return json_response(200, plane.jwks())


ROUTES = (
    route("GET", r"/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration", _oidc, "login/metadata"),
    route("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", _token, "login/token"),
    route("GET", r"/(?P<tenant>[^/]+)/discovery/v2\.0/keys", _keys, "login/keys"),
)  # fmt: skip
