"""Authorization: what a principal may do, as ``Microsoft.Authorization/permissions``
answers for the caller. The plane's principals hold the deployment's custom role, and
Security Admin when ``security_admin`` is set."""

from __future__ import annotations

import re
import uuid
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from localazure.estate import Principal
from localazure.machinery import (
    SUB,
    ArmError,
    Params,
    Query,
    Response,
    json_response,
    route,
    utc_now,
)

if TYPE_CHECKING:
    from localazure.server import LocalAzure

# GET {scope}/providers/Microsoft.Authorization/permissions: azure-rest-api-specs
# specification/authorization/resource-manager/Microsoft.Authorization/stable/2022-04-01/
# authorization-RoleDefinitionsCalls.json (Permissions_ListForResourceGroup); the
# subscription scope is shown in "Use Resource Manager authentication API to access
# subscriptions" (api-version 2015-07-01) and answers the same shape.
API_VERSIONS = {
    "permissions": {"2015-07-01", "2022-04-01"},
    "roles": {"2022-04-01"},  # role assignments and definitions (the hooks, Bicep)
}
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


# --- Role assignments and custom role definitions ---------------------------------------
# azure-rest-api-specs specification/authorization/resource-manager/Microsoft.Authorization/
# stable/2022-04-01: authorization-RoleAssignmentsCalls.json (RoleAssignments_Create 201,
# _Delete 200 with the assignment or 204, _ListForSubscription with $filter
# "principalId eq '{id}'") and authorization-RoleDefinitionsCalls.json (RoleDefinitions_List
# with $filter "roleName eq '{name}'", _Delete 200/204). A second assignment of one role to
# one principal at one scope is 409 RoleAssignmentExists "The role assignment already
# exists." (role-based-access-control/troubleshooting); a custom role still assigned
# cannot be deleted: 409 RoleDefinitionHasAssignments (same page, "Unable to delete a
# custom role").
_ASSIGNMENT = r"(?P<scope>/subscriptions/(?P<sub>[^/]+)(?:/.+?)?)/providers/Microsoft\.Authorization/roleAssignments/(?P<name>[^/]+)"
_DEFINITION = SUB + r"/providers/Microsoft\.Authorization/roleDefinitions/(?P<name>[^/]+)"
_FILTER = re.compile(r"^\s*(principalId|roleName) eq '([^']*)'\s*$")


def _filter(q: Query, field: str) -> str | None:
    raw = q.get("$filter", "")
    if not raw:
        return None
    match = _FILTER.match(raw)
    if match is None or match.group(1) != field:
        raise ArmError(400, "InvalidFilterInQueryString", f"The filter '{raw}' is not supported.")
    return match.group(2)


def _put_assignment(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    properties = (body or {}).get("properties") or {}
    role, principal = properties.get("roleDefinitionId"), properties.get("principalId")
    if not role or not principal:
        raise ArmError(
            400, "InvalidRoleAssignmentRequest", "roleDefinitionId and principalId are required"
        )
    assignment_id = f"{p['scope']}/providers/Microsoft.Authorization/roleAssignments/{p['name']}"
    for key, other in plane.role_assignments.items():
        same = other["properties"]
        if (
            key != assignment_id.lower()
            and same["scope"].lower() == p["scope"].lower()
            and same["principalId"] == principal
            and same["roleDefinitionId"].lower() == str(role).lower()
        ):
            raise ArmError(409, "RoleAssignmentExists", "The role assignment already exists.")
    assignment = {
        "id": assignment_id,
        "name": p["name"],
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "scope": p["scope"],
            "roleDefinitionId": role,
            "principalId": principal,
            "principalType": properties.get("principalType", "ServicePrincipal"),
            "createdOn": utc_now(),
        },
    }
    plane.role_assignments[assignment_id.lower()] = assignment
    return json_response(201, assignment)


def _listed(store: dict[str, dict[str, Any]], p: Params, q: Query, field: str) -> Response:
    """A list at a subscription, with the one $filter each list takes (``field eq '…'``)."""
    wanted = _filter(q, field)
    prefix = f"/subscriptions/{p['sub']}".lower()
    found = [
        item
        for key, item in store.items()
        if key.startswith(prefix) and wanted in {None, item["properties"][field]}
    ]
    return json_response(200, {"value": found})


def _list_assignments(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    return _listed(plane.role_assignments, p, q, "principalId")


def _delete_assignment(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    assignment_id = f"{p['scope']}/providers/Microsoft.Authorization/roleAssignments/{p['name']}"
    removed = plane.role_assignments.pop(assignment_id.lower(), None)
    return json_response(200, removed) if removed else Response(204, b"", {})


def _list_definitions(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    return _listed(plane.role_definitions, p, q, "roleName")


def _delete_definition(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    definition_id = (
        f"/subscriptions/{p['sub']}/providers/Microsoft.Authorization/roleDefinitions/{p['name']}"
    )
    if any(
        item["properties"]["roleDefinitionId"].lower() == definition_id.lower()
        for item in plane.role_assignments.values()
    ):
        raise ArmError(
            409,
            "RoleDefinitionHasAssignments",
            "There are existing role assignments referencing role.",
        )
    removed = plane.role_definitions.pop(definition_id.lower(), None)
    return json_response(200, removed) if removed else Response(204, b"", {})


def deploy_access(
    plane: LocalAzure, environment: str, principal_id: str, subscription: str
) -> None:
    """What infra/access.bicep leaves in a subscription: the events group, the custom role
    and its assignment to the app (tests/test_infra.py keeps the names in step)."""
    group = f"/subscriptions/{subscription}/resourceGroups/rg-{environment}-events"
    plane.resource_groups[group.lower()] = {
        "id": group,
        "name": f"rg-{environment}-events",
        "type": "Microsoft.Resources/resourceGroups",
        "location": "westeurope",
        "tags": {"azd-env-name": environment},
        "properties": {"provisioningState": "Succeeded"},
    }
    role_name = f"Defender coverage remediator ({environment}, {subscription})"
    definition = f"/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/{uuid.uuid5(uuid.NAMESPACE_URL, role_name)}"
    plane.role_definitions[definition.lower()] = {
        "id": definition,
        "name": definition.rsplit("/", 1)[1],
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {"roleName": role_name, "type": "CustomRole"},
    }
    assignment = f"/subscriptions/{subscription}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid5(uuid.NAMESPACE_URL, definition + principal_id)}"
    plane.role_assignments[assignment.lower()] = {
        "id": assignment,
        "name": assignment.rsplit("/", 1)[1],
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "scope": f"/subscriptions/{subscription}",
            "roleDefinitionId": definition,
            "principalId": principal_id,
            "principalType": "ServicePrincipal",
        },
    }


ROUTES = (
    route("GET", SUB + r"/providers/Microsoft\.Authorization/permissions", _permissions, "Microsoft.Authorization/permissions/read", "permissions"),
    route("GET", SUB + r"/resourcegroups/(?P<rg>[^/]+)/providers/Microsoft\.Authorization/permissions", _permissions, "Microsoft.Authorization/permissions/read", "permissions"),
    route("PUT", _ASSIGNMENT, _put_assignment, "Microsoft.Authorization/roleAssignments/write", "roles"),
    route("DELETE", _ASSIGNMENT, _delete_assignment, "Microsoft.Authorization/roleAssignments/delete", "roles"),
    route("GET", SUB + r"/providers/Microsoft\.Authorization/roleAssignments", _list_assignments, "Microsoft.Authorization/roleAssignments/read", "roles"),
    route("GET", SUB + r"/providers/Microsoft\.Authorization/roleDefinitions", _list_definitions, "Microsoft.Authorization/roleDefinitions/read", "roles"),
    route("DELETE", _DEFINITION, _delete_definition, "Microsoft.Authorization/roleDefinitions/delete", "roles"),
)  # fmt: skip
