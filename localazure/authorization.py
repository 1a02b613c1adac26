"""Authorization: what a principal may do, as ``Microsoft.Authorization/permissions``
answers for the caller. The plane's principals hold the deployment's custom role, and
Security Admin when ``security_admin`` is set."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from localazure.estate import Principal
from localazure.machinery import SUB, ArmError, Params, Query, Response, json_response, route

if TYPE_CHECKING:
    from localazure.server import LocalAzure

# GET {scope}/providers/Microsoft.Authorization/permissions: azure-rest-api-specs
# specification/authorization/resource-manager/Microsoft.Authorization/stable/2022-04-01/
# authorization-RoleDefinitionsCalls.json (Permissions_ListForResourceGroup); the
# subscription scope is shown in "Use Resource Manager authentication API to access
# subscriptions" (api-version 2015-07-01) and answers the same shape.
API_VERSIONS = {"permissions": {"2015-07-01", "2022-04-01"}}
# Security Admin (fb1c8493-542b-48eb-b624-b4c8fea62acd) grants Microsoft.Security/*
# among others (learn.microsoft.com/azure/role-based-access-control/built-in-roles/security).
SECURITY_ADMIN_ACTIONS = ("Microsoft.Authorization/*/read", "Microsoft.Security/*")


def granted(principal: Principal | None) -> list[str]:
    if principal is None:
        return []
    return list(principal.actions) + list(
        SECURITY_ADMIN_ACTIONS if principal.security_admin else ()
    )


def require(plane: LocalAzure, who: str, action: str, scope: str) -> None:
    """403 AuthorizationFailed unless a granted action (wildcards allowed, any case)
    covers ``action``: ARM's RBAC check, as its error message words it."""
    principal = plane._principal_by_oid(who)
    if any(fnmatchcase(action.lower(), pattern.lower()) for pattern in granted(principal)):
        return
    raise ArmError(
        403,
        "AuthorizationFailed",
        f"The client '{principal.client_id if principal else who}' with object id "
        f"'{who}' does not have authorization to perform action '{action}' "
        f"over scope '{scope}' or the scope is invalid.",
    )


def _permissions(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    actions = granted(plane._principal_by_oid(who))
    permission = {"actions": actions, "notActions": [], "dataActions": [], "notDataActions": []}
    return json_response(200, {"value": [permission]})


ROUTES = (
    route("GET", SUB + r"/providers/Microsoft\.Authorization/permissions", _permissions, "Microsoft.Authorization/permissions/read", "permissions"),
    route("GET", SUB + r"/resourcegroups/(?P<rg>[^/]+)/providers/Microsoft\.Authorization/permissions", _permissions, "Microsoft.Authorization/permissions/read", "permissions"),
)  # fmt: skip
