"""Event Grid: the events ARM raises for writes and actions, with the caller's claims, and
the custom topic at ``/api/events`` that the app publishes its notifications to."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from localazure.estate import Principal
from localazure.machinery import ArmError, Params, Query, Response, route, utc_now

if TYPE_CHECKING:
    from localazure.server import LocalAzure

API_VERSIONS = {"topic": {"2018-01-01"}}
OBJECT_ID_CLAIM = "http://schemas.microsoft.com/identity/claims/objectidentifier"


def record_event(
    plane: LocalAzure,
    kind: str,
    operation: str,
    resource_id: str,
    caller: Principal | str | None,
    outcome: str = "Success",
) -> dict[str, Any]:
    """Record the Event Grid event ARM raises for a write or action, and return it."""
    principal = plane._principal_by_oid(caller) if isinstance(caller, str) else caller
    object_id = principal.object_id if principal else "5c2f1a3b-0000-4000-8000-00000000beef"
    app_id = principal.client_id if principal else "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
    subscription = resource_id.split("/")[2]
    event = {
        "id": str(uuid.uuid4()),
        "topic": f"/subscriptions/{subscription}",
        "subject": resource_id,
        "eventType": f"Microsoft.Resources.Resource{kind}{outcome}",
        "eventTime": utc_now(),
        "dataVersion": "2",
        "metadataVersion": "1",
        "data": {
            "authorization": {
                "scope": resource_id,
                "action": operation,
                "evidence": {
                    "role": "Contributor",
                    "principalId": object_id.replace("-", ""),
                    "principalType": "ServicePrincipal" if principal else "User",
                },
            },
            "claims": {
                "aud": plane.url,
                "iss": f"{plane.url}/{plane.estate.tenant}/",
                "appid": app_id,
                OBJECT_ID_CLAIM: object_id,
            },
            "correlationId": str(uuid.uuid4()),
            "resourceProvider": operation.split("/", 1)[0],
            "resourceUri": resource_id,
            "operationName": operation,
            "status": "Succeeded" if outcome == "Success" else "Failed",
            "subscriptionId": subscription,
            "tenantId": plane.estate.tenant,
        },
    }
    plane.events.append(event)
    return event


def _topic(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    """An Event Grid custom topic: checks the schema (the router checks the key header),
    keeps the events."""
    required = {"id", "subject", "eventType", "eventTime", "data", "dataVersion"}
    if not isinstance(body, list) or not body:
        raise ArmError(400, "BadRequest", "the body must be a JSON array of events")
    for event in body:
        if not isinstance(event, dict) or not required <= set(event):
            raise ArmError(
                400, "BadRequest", f"an event lacks {sorted(required - set(event or {}))}"
            )
    plane.published.extend(body)
    return Response(200, b"", {})


ROUTES = (route("POST", r"/api/events", _topic, "eventgrid/publish", "topic"),)
