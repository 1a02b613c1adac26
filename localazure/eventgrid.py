"""Event Grid: the events ARM raises for writes and actions, with the caller's claims, and
the custom topic at ``/api/events`` that the app publishes its notifications to."""

from __future__ import annotations

import json
import re
import uuid
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
from localazure.resources import require_registered

if TYPE_CHECKING:
    from localazure.server import LocalAzure

API_VERSIONS = {
    "topic": {"2018-01-01"},
    # azure-mgmt-eventgrid 10.4.0 sends 2025-02-15.
    "eventgrid": {"2025-02-15", "2024-06-01-preview"},
}
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


# --- Management: system topics and their event subscriptions -------------------------
# Paths and bodies: azure-rest-api-specs specification/eventgrid/resource-manager/
# Microsoft.EventGrid/stable/2025-02-15 (SystemTopics_*, SystemTopicEventSubscriptions_*).
_TOPIC = (
    SUB
    + r"/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.EventGrid/systemTopics/(?P<topic>[^/]+)"
)


def _topic_id(p: Params) -> str:
    return (
        f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}"
        f"/providers/Microsoft.EventGrid/systemTopics/{p['topic']}"
    )


def _list_topics(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    prefix = f"/subscriptions/{p['sub']}/".lower()
    topics = [t for key, t in plane.system_topics.items() if key.startswith(prefix)]
    return json_response(200, {"value": topics})


def _get_topic(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    topic = plane.system_topics.get(_topic_id(p).lower())
    if topic is None:
        raise ArmError(404, "ResourceNotFound", f"The Resource '{_topic_id(p)}' was not found.")
    return json_response(200, topic)


def _put_topic(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    """A system topic lives in the subscription of its source, and a source has one
    system topic only (learn.microsoft.com/azure/event-grid/system-topics: "Only one Azure
    Event Grid system topic is allowed per source"; "Event Grid creates a system topic
    resource in the same Azure subscription that has the event source")."""
    topic_id = _topic_id(p)
    require_registered(plane, p["sub"], "Microsoft.EventGrid")
    properties = (body or {}).get("properties") or {}
    source = str(properties.get("source") or "")
    topic_type = str(properties.get("topicType") or "")
    if not source or not topic_type:
        raise ArmError(
            400, "InvalidRequest", "properties.source and properties.topicType are required"
        )
    if source.lower().split("/")[:3] != f"/subscriptions/{p['sub']}".lower().split("/")[:3]:
        raise ArmError(
            400,
            "InvalidRequest",
            f"The source '{source}' must be in the same subscription as the system topic.",
        )
    for key, other in plane.system_topics.items():
        if key != topic_id.lower() and other["properties"]["source"].lower() == source.lower():
            raise ArmError(
                400,
                "InvalidRequest",
                f"Only one system topic is allowed per source: '{source}' already has "
                f"'{other['id']}'.",
            )
    existed = topic_id.lower() in plane.system_topics
    identity = (body or {}).get("identity")
    topic = {
        "id": topic_id,
        "name": p["topic"],
        "type": "Microsoft.EventGrid/systemTopics",
        "location": (body or {}).get("location") or "global",
        "properties": {
            "source": source,
            "topicType": topic_type,
            "provisioningState": "Succeeded",
            "metricResourceId": str(uuid.uuid5(uuid.NAMESPACE_URL, topic_id.lower())),
        },
    }
    if identity and str(identity.get("type", "")).lower() == "systemassigned":
        # A system-assigned identity gets a principal in the tenant (the topic keeps it).
        before = (plane.system_topics.get(topic_id.lower()) or {}).get("identity") or {}
        topic["identity"] = {
            "type": "SystemAssigned",
            "principalId": before.get("principalId") or str(uuid.uuid4()),
            "tenantId": plane.estate.tenant,
        }
    plane.system_topics[topic_id.lower()] = topic
    return json_response(200 if existed else 201, topic)


def _list_subscriptions(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    _get_topic(plane, p, q, body, who)
    prefix = (_topic_id(p) + "/eventSubscriptions/").lower()
    items = [e for key, e in plane.event_subscriptions.items() if key.startswith(prefix)]
    return json_response(200, {"value": items})


def _get_subscription(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    item_id = f"{_topic_id(p)}/eventSubscriptions/{p['name']}"
    item = plane.event_subscriptions.get(item_id.lower())
    if item is None:
        raise ArmError(404, "ResourceNotFound", f"The Resource '{item_id}' was not found.")
    return json_response(200, item)


def _put_subscription(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    """The destination is checked as Event Grid checks it when the subscription is
    written (see _check_destination); the body is kept as sent."""
    topic = json.loads(_get_topic(plane, p, q, body, who).body)
    item_id = f"{_topic_id(p)}/eventSubscriptions/{p['name']}"
    properties = dict((body or {}).get("properties") or {})
    with_identity = properties.get("deliveryWithResourceIdentity")
    destination = properties.get("destination")
    if bool(with_identity) == bool(destination):
        raise ArmError(
            400,
            "InvalidRequest",
            "Exactly one of destination or deliveryWithResourceIdentity must be specified.",
        )
    if with_identity:
        wanted = str((with_identity.get("identity") or {}).get("type", ""))
        held = str((topic.get("identity") or {}).get("type", ""))
        if not wanted or wanted.lower() != held.lower():
            raise ArmError(
                400,
                "InvalidRequest",
                f"The identity type '{wanted}' is not enabled on the system topic "
                f"'{topic['name']}': enable its {wanted or 'SystemAssigned'} identity first.",
            )
        destination = with_identity.get("destination") or {}
    _check_destination(destination)
    properties.update(provisioningState="Succeeded", topic=_topic_id(p))
    item = {
        "id": item_id,
        "name": p["name"],
        "type": "Microsoft.EventGrid/systemTopics/eventSubscriptions",
        "properties": properties,
    }
    plane.event_subscriptions[item_id.lower()] = item
    # The spec's only answer to this PUT is 201, for an update too.
    return json_response(201, item)


_STORAGE_ACCOUNT = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Storage/storageAccounts/[a-z0-9]{3,24}$",
    re.IGNORECASE,
)
_QUEUE_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")


def _check_destination(destination: dict[str, Any]) -> None:
    """azure-rest-api-specs Microsoft.EventGrid stable/2025-02-15 EventGrid.json:
    - StorageQueueEventSubscriptionDestination: ``resourceId`` "of the storage account
      that contains the queue", ``queueName``, ``queueMessageTimeToLiveInSeconds`` which
      "cannot be zero or negative with the exception of using -1" (infinite).
    Queue names follow the Storage naming rules (3-63 lowercase letters, digits, single
    hyphens)."""
    kind = destination.get("endpointType")
    properties = destination.get("properties") or {}
    if kind == "StorageQueue":
        account = str(properties.get("resourceId") or "")
        queue = str(properties.get("queueName") or "")
        ttl = properties.get("queueMessageTimeToLiveInSeconds", -1)
        if not _STORAGE_ACCOUNT.match(account):
            raise ArmError(
                400, "InvalidRequest", f"Invalid storage account resource id: '{account}'."
            )
        if not _QUEUE_NAME.match(queue):
            raise ArmError(400, "InvalidRequest", f"Invalid storage queue name: '{queue}'.")
        if not isinstance(ttl, int) or (ttl <= 0 and ttl != -1):
            raise ArmError(
                400,
                "InvalidRequest",
                "queueMessageTimeToLiveInSeconds cannot be zero or negative with the "
                "exception of using -1 to indicate that the Time To Live of the message is "
                "Infinite.",
            )
    else:  # the app wires a queue (docs/deploy.md); other endpoint types are not modelled
        raise ArmError(
            400,
            "InvalidRequest",
            f"The destination endpoint type '{kind}' is not modelled by the local Azure.",
        )


def _delete_subscription(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    """DELETE answers 200 (deleted), 202 (accepted) or 204 (absent) in the spec; this
    plane deletes at once."""
    item_id = f"{_topic_id(p)}/eventSubscriptions/{p['name']}"
    existed = plane.event_subscriptions.pop(item_id.lower(), None) is not None
    return Response(200 if existed else 204, b"", {})


ROUTES = (
    route("POST", r"/api/events", _topic, "eventgrid/publish", "topic"),
    route("GET", SUB + r"/providers/Microsoft\.EventGrid/systemTopics", _list_topics, "Microsoft.EventGrid/systemTopics/read", "eventgrid"),
    route("GET", _TOPIC, _get_topic, "Microsoft.EventGrid/systemTopics/read", "eventgrid"),
    route("PUT", _TOPIC, _put_topic, "Microsoft.EventGrid/systemTopics/write", "eventgrid"),
    route("GET", _TOPIC + r"/eventSubscriptions", _list_subscriptions, "Microsoft.EventGrid/systemTopics/eventSubscriptions/read", "eventgrid"),
    route("GET", _TOPIC + r"/eventSubscriptions/(?P<name>[^/]+)", _get_subscription, "Microsoft.EventGrid/systemTopics/eventSubscriptions/read", "eventgrid"),
    route("PUT", _TOPIC + r"/eventSubscriptions/(?P<name>[^/]+)", _put_subscription, "Microsoft.EventGrid/systemTopics/eventSubscriptions/write", "eventgrid"),
    route("DELETE", _TOPIC + r"/eventSubscriptions/(?P<name>[^/]+)", _delete_subscription, "Microsoft.EventGrid/systemTopics/eventSubscriptions/delete", "eventgrid"),
)  # fmt: skip
