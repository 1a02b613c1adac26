"""azd hooks: deliver each remediated subscription's VM writes and starts to the app's
event queue (postdeploy), and take all of it away again (postdown, ``--remove``).

The route (docs/deploy.md, "Events"): an Event Grid system topic per subscription, whose
event subscription has a **StorageQueue** destination, the queue ``on_vm_event`` reads.
Microsoft documents no ``AzureFunction`` destination for a Flex Consumption app; a queue
is documented for every plan, needs no endpoint validation handshake, keeps events while
the app is down, and takes Event Grid's 30-second delivery timeout off the function. The
app's storage refuses shared keys, so Event Grid delivers with the system topic's own
identity ("deliveryWithResourceIdentity"), which this hook gives the role "Storage Queue
Data Message Sender" on that one queue (Event Grid docs: handler-storage-queues,
add-identity-roles).

Per subscription:
1. Microsoft.EventGrid must be registered there: direct PUTs do not register providers
   (Event Grid quickstarts: "register the Event Grid resource provider"); it is
   registered, and waited for, if it is not.
2. Reuse its ``Microsoft.Resources.Subscriptions`` system topic if it has one (only one is
   allowed per source), giving it a system-assigned identity if it has none; else create
   one in the subscription's remediator resource group (a system topic must live in its
   source's subscription; the group is created if missing).
3. Give the topic's identity the sender role on the queue; create or update the event
   subscription.
Idempotent: run it again after adding a subscription (`azd hooks run postdeploy`).

``--remove`` (azd's postdown hook): azd deletes resource groups, not what a deployment put
at subscription scope (Azure/azure-dev#2916, #4785). In each subscription it deletes this
deployment's event subscriptions, the remediator's events group (with the topic it
created), the app's role assignments and the custom role.

Settings (azd passes the deployment's outputs as environment variables):
REMEDIATOR_EVENT_STORAGE_ID, REMEDIATOR_EVENT_QUEUE, REMEDIATOR_SUBSCRIPTIONS,
REMEDIATOR_EVENTS_GROUP, REMEDIATOR_ARM_ENDPOINT (default https://management.azure.com;
Bicep's value ends in "/"), AZURE_LOCATION (where a missing events group is created);
for ``--remove`` also AZURE_ENV_NAME and REMEDIATOR_PRINCIPAL_ID. ``--subscriptions a,b``
works on those instead: the report names the subscriptions that joined the scope through
a management group and are not wired yet (remediation/scope.py WIRE_COMMAND).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from azure.core import PipelineClient
from azure.core.credentials import TokenCredential
from azure.core.pipeline.policies import BearerTokenCredentialPolicy, RequestIdPolicy
from azure.core.pipeline.policies import RetryPolicy as HttpRetryPolicy
from azure.core.polling import LROPoller
from azure.core.rest import HttpRequest, HttpResponse
from azure.mgmt.core.polling.arm_polling import ARMPolling
from azure.mgmt.eventgrid import EventGridManagementClient
from azure.mgmt.eventgrid.models import (
    DeliveryWithResourceIdentity,
    EventSubscription,
    EventSubscriptionFilter,
    EventSubscriptionIdentity,
    IdentityInfo,
    RetryPolicy,
    StorageQueueEventSubscriptionDestination,
    StringInAdvancedFilter,
    SystemTopic,
)

from remediation.config import MICROSOFT_AUTHORITIES, endpoint
from remediation.events import ACCEPTED

TOPIC_TYPE = "Microsoft.Resources.Subscriptions"
TOPIC_NAME = "remediator-subscription-events"
SUBSCRIPTION_NAME = "remediator-vm-events"
LEGACY_SUBSCRIPTION_NAME = "vm-write-and-start"  # what infra/events.bicep used to create
FUNCTION = "on_vm_event"
PROVIDER = "Microsoft.EventGrid"
RESOURCES_API = "2021-04-01"
AUTHORIZATION_API = "2022-04-01"
# Built-in role "Storage Queue Data Message Sender" (Azure built-in roles, Storage).
QUEUE_SENDER = "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a"
# A message Event Grid could not hand over lives this long in the queue (7 days, the
# queue's own default): the app may be down over a weekend.
QUEUE_TTL_SECONDS = 7 * 24 * 3600
ROLE_NAME = "Defender coverage remediator ({environment}, {subscription})"  # access.bicep


def event_subscription(storage_id: str, queue: str) -> EventSubscription:
    """What the app accepts, and nothing else: every other event would be delivered only
    to be ignored (remediation/events.py ACCEPTED)."""
    return EventSubscription(
        delivery_with_resource_identity=DeliveryWithResourceIdentity(
            identity=EventSubscriptionIdentity(type="SystemAssigned"),
            destination=StorageQueueEventSubscriptionDestination(
                resource_id=storage_id,
                queue_name=queue,
                queue_message_time_to_live_in_seconds=QUEUE_TTL_SECONDS,
            ),
        ),
        filter=EventSubscriptionFilter(
            included_event_types=sorted({event_type for event_type, _ in ACCEPTED}),
            advanced_filters=[
                StringInAdvancedFilter(
                    key="data.operationName",
                    values=sorted({operation for _, operation in ACCEPTED}),
                )
            ],
        ),
        event_delivery_schema="EventGridSchema",
        # Event Grid's defaults, said out loud: 30 tries over 24 hours; then the nightly
        # sweep finds the VM.
        retry_policy=RetryPolicy(max_delivery_attempts=30, event_time_to_live_in_minutes=1440),
    )


def _group_of(resource_id: str) -> str:
    parts = resource_id.split("/")
    return parts[parts.index("resourceGroups") + 1]


class Arm:
    """Raw ARM calls the Event Grid SDK does not make: providers, resource groups, role
    assignments and definitions. One pipeline: azure-core's retries and bearer tokens."""

    def __init__(self, credential: TokenCredential, arm: str, **client_options: Any) -> None:
        self.arm = endpoint(arm)
        self.client: PipelineClient[Any, Any] = PipelineClient(
            base_url=self.arm,
            policies=[
                RequestIdPolicy(),  # ARM's LRO polling sends the request's id on
                HttpRetryPolicy(),
                BearerTokenCredentialPolicy(credential, f"{self.arm}/.default"),
            ],
            **client_options,
        )

    def send(self, method: str, path: str, api: str, body: Any = None) -> HttpResponse:
        separator = "&" if "?" in path else "?"
        request = HttpRequest(method, f"{self.arm}{path}{separator}api-version={api}", json=body)
        return self.client.send_request(request)

    def ok(self, method: str, path: str, api: str, body: Any = None) -> Any:
        response = self.send(method, path, api, body)
        response.raise_for_status()
        return response.json() if response.content else None

    def delete_waiting(self, path: str, api: str) -> bool:
        """A DELETE that may answer 202: waited for with ARM's LRO polling (Location /
        Azure-AsyncOperation, Retry-After). False when there was nothing to delete."""
        request = HttpRequest("DELETE", f"{self.arm}{path}?api-version={api}")
        pipeline_response = self.client.send_request(request, _return_pipeline_response=True)
        status = pipeline_response.http_response.status_code
        if status in {204, 404}:
            return False
        pipeline_response.http_response.raise_for_status()
        if status == 202:
            LROPoller(self.client, pipeline_response, lambda _: None, ARMPolling(1)).result()
        return True


def ensure_registered(
    arm: Arm,
    subscription: str,
    *,
    wait_seconds: float = 300,
    poll_seconds: float = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Register Microsoft.EventGrid in the subscription if it is not; wait for it (ARM's
    ``registrationState``: NotRegistered, Registering, Registered). Returns what was done."""
    path = f"/subscriptions/{subscription}/providers/{PROVIDER}"
    state = str(arm.ok("GET", path, RESOURCES_API).get("registrationState", ""))
    if state == "Registered":
        return ""
    arm.ok("POST", f"{path}/register", RESOURCES_API)
    waited = 0.0
    while state != "Registered":
        if waited >= wait_seconds:
            raise SystemExit(
                f"error: {PROVIDER} is still {state or 'not registered'} in subscription "
                f"{subscription}; wait, then run `azd hooks run postdeploy` again "
                f"(or: az provider register --namespace {PROVIDER} --subscription {subscription})"
            )
        sleep(poll_seconds)
        waited += poll_seconds
        state = str(arm.ok("GET", path, RESOURCES_API).get("registrationState", ""))
    return f"registered {PROVIDER}; "


def wire(
    credential: TokenCredential,
    subscriptions: Iterable[str],
    storage_id: str,
    queue: str,
    events_group: str,
    *,
    arm_endpoint: str = "https://management.azure.com",
    location: str = "",
    poll_seconds: float = 5,
    **client_options: Any,
) -> list[str]:
    """Wire every subscription; returns one line per subscription saying what was done."""
    base = endpoint(arm_endpoint)
    arm = Arm(credential, base, **client_options)
    done = []
    for subscription in subscriptions:
        registered = ensure_registered(arm, subscription, poll_seconds=poll_seconds)
        client = EventGridManagementClient(
            credential,
            subscription,
            base_url=base,
            credential_scopes=[f"{base}/.default"],
            **client_options,
        )
        source = f"/subscriptions/{subscription}"
        existing = next(
            (
                topic
                for topic in client.system_topics.list_by_subscription()
                if (topic.source or "").lower() == source.lower()
                and (topic.topic_type or "").lower() == TOPIC_TYPE.lower()
            ),
            None,
        )
        if existing is not None and existing.id and existing.name:
            group, name, how = _group_of(existing.id), existing.name, "reused"
            topic = existing
            if existing.identity is None or existing.identity.principal_id is None:
                existing.identity = IdentityInfo(type="SystemAssigned")
                topic = client.system_topics.begin_create_or_update(group, name, existing).result()
                how = "reused, identity added"
        else:
            group, name, how = events_group, TOPIC_NAME, "created"
            _ensure_group(arm, subscription, group, location)
            topic = client.system_topics.begin_create_or_update(
                group,
                name,
                SystemTopic(
                    location="global",
                    source=source,
                    topic_type=TOPIC_TYPE,
                    identity=IdentityInfo(type="SystemAssigned"),
                ),
            ).result()
        principal = topic.identity.principal_id if topic.identity else None
        if not principal:
            raise SystemExit(f"error: system topic {name} has no identity to deliver with")
        _grant_sender(arm, storage_id, queue, principal)
        client.system_topic_event_subscriptions.begin_create_or_update(
            group, name, SUBSCRIPTION_NAME, event_subscription(storage_id, queue)
        ).result()
        line = f"{subscription}: {registered}system topic {name} ({how}) -> queue {queue}"
        # The first release's templates wired the same events under another name; two
        # subscriptions would deliver every event twice.
        if any(
            item.name == LEGACY_SUBSCRIPTION_NAME
            for item in client.system_topic_event_subscriptions.list_by_system_topic(group, name)
        ):
            client.system_topic_event_subscriptions.begin_delete(
                group, name, LEGACY_SUBSCRIPTION_NAME
            ).result()
            line += f"; removed the older {LEGACY_SUBSCRIPTION_NAME}"
        done.append(line)
    return done


def _ensure_group(arm: Arm, subscription: str, group: str, location: str) -> None:
    """Create the events resource group (a PUT is idempotent): a subscription that joined
    a management group had no access.bicep deployment to create it. A group that exists
    in another region answers 409 InvalidResourceGroupLocation: it is there, and will do."""
    if not location:
        raise SystemExit("error: set AZURE_LOCATION: the events resource group needs a region")
    path = f"/subscriptions/{subscription}/resourcegroups/{group}"
    body = {"location": location, "tags": {"created-by": "wire_events"}}
    response = arm.send("PUT", path, RESOURCES_API, body)
    if response.status_code == 409 and "InvalidResourceGroupLocation" in response.text():
        return
    response.raise_for_status()


def _grant_sender(arm: Arm, storage_id: str, queue: str, principal: str) -> None:
    """Storage Queue Data Message Sender for the topic's identity, on the one queue. The
    assignment's name is derived from what it grants, so a second run PUTs the same one;
    409 RoleAssignmentExists (the same grant under another name) is as good."""
    scope = f"{storage_id}/queueServices/default/queues/{queue}"
    name = uuid.uuid5(uuid.NAMESPACE_URL, f"{scope.lower()}|{principal}|{QUEUE_SENDER}")
    subscription = storage_id.split("/")[2]
    role = f"/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions"
    body = {
        "properties": {
            "roleDefinitionId": f"{role}/{QUEUE_SENDER}",
            "principalId": principal,
            "principalType": "ServicePrincipal",
        }
    }
    path = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
    response = arm.send("PUT", path, AUTHORIZATION_API, body)
    if response.status_code == 409 and "RoleAssignmentExists" in response.text():
        return
    response.raise_for_status()


def remove(
    credential: TokenCredential,
    subscriptions: Iterable[str],
    environment: str,
    principal_id: str,
    events_group: str,
    *,
    arm_endpoint: str = "https://management.azure.com",
    **client_options: Any,
) -> list[str]:
    """Undo, per subscription, what azd down leaves: the event subscription (from any
    system topic), the events group this deployment or the hook created, the app's role
    assignments at the subscription, and the custom role. One line per subscription."""
    base = endpoint(arm_endpoint)
    arm = Arm(credential, base, **client_options)
    done = []
    for subscription in subscriptions:
        removed: list[str] = []
        client = EventGridManagementClient(
            credential,
            subscription,
            base_url=base,
            credential_scopes=[f"{base}/.default"],
            **client_options,
        )
        for topic in client.system_topics.list_by_subscription():
            if not topic.id or not topic.name:
                continue
            group = _group_of(topic.id)
            names = {
                item.name
                for item in client.system_topic_event_subscriptions.list_by_system_topic(
                    group, topic.name
                )
            }
            for name in sorted(names & {SUBSCRIPTION_NAME, LEGACY_SUBSCRIPTION_NAME}):
                client.system_topic_event_subscriptions.begin_delete(
                    group, topic.name, name
                ).result()
                removed.append(f"event subscription {name}")
        group_path = f"/subscriptions/{subscription}/resourcegroups/{events_group}"
        group = arm.send("GET", group_path, RESOURCES_API)
        if group.status_code == 200 and _ours(group.json().get("tags") or {}, environment):
            arm.delete_waiting(group_path, RESOURCES_API)
            removed.append(f"resource group {events_group}")
        authorization = f"/subscriptions/{subscription}/providers/Microsoft.Authorization"
        held_by = quote(f"principalId eq '{principal_id}'")
        assignments = arm.ok(
            "GET", f"{authorization}/roleAssignments?$filter={held_by}", AUTHORIZATION_API
        )
        for assignment in assignments.get("value", []):
            arm.delete_waiting(assignment["id"], AUTHORIZATION_API)
            removed.append(f"role assignment {assignment['name']}")
        role_name = ROLE_NAME.format(environment=environment, subscription=subscription)
        named = quote(f"roleName eq '{role_name}'")
        definitions = arm.ok(
            "GET", f"{authorization}/roleDefinitions?$filter={named}", AUTHORIZATION_API
        )
        for definition in definitions.get("value", []):
            arm.delete_waiting(definition["id"], AUTHORIZATION_API)
            removed.append(f"custom role '{role_name}'")
        done.append(f"{subscription}: removed {', '.join(removed) if removed else 'nothing'}")
    return done


def _ours(tags: Mapping[str, str], environment: str) -> bool:
    """The events group access.bicep created (azd-env-name) or this hook did."""
    return tags.get("azd-env-name") == environment or tags.get("created-by") == "wire_events"


def main(environ: Mapping[str, str], argv: Sequence[str] = ()) -> int:
    from azure.identity import DefaultAzureCredential  # noqa: PLC0415 - azd's login

    parser = argparse.ArgumentParser(description="Wire Event Grid to the remediator.")
    parser.add_argument("--subscriptions", help="comma-separated ids (default: the deployment's)")
    parser.add_argument(
        "--remove", action="store_true", help="remove what azd down leaves behind (postdown)"
    )
    args = parser.parse_args(argv)
    needed = ["REMEDIATOR_EVENTS_GROUP"]
    needed += (
        ["AZURE_ENV_NAME", "REMEDIATOR_PRINCIPAL_ID"]
        if args.remove
        else ["REMEDIATOR_EVENT_STORAGE_ID", "REMEDIATOR_EVENT_QUEUE"]
    )
    if not args.subscriptions:
        needed.append("REMEDIATOR_SUBSCRIPTIONS")
    missing = [name for name in needed if not environ.get(name)]
    if missing:
        print(f"error: missing {', '.join(missing)} (run through azd)", file=sys.stderr)
        return 2
    listed = args.subscriptions or environ["REMEDIATOR_SUBSCRIPTIONS"]
    subscriptions = [s.strip() for s in listed.split(",") if s.strip()]
    arm = environ.get("REMEDIATOR_ARM_ENDPOINT") or "https://management.azure.com"
    # A private (or local) authority has no Microsoft instance discovery to answer.
    authority = urlsplit(environ.get("AZURE_AUTHORITY_HOST", "")).hostname or ""
    private = bool(authority) and authority not in MICROSOFT_AUTHORITIES
    credential = DefaultAzureCredential(disable_instance_discovery=private)
    if args.remove:
        lines = remove(
            credential,
            subscriptions,
            environ["AZURE_ENV_NAME"],
            environ["REMEDIATOR_PRINCIPAL_ID"],
            environ["REMEDIATOR_EVENTS_GROUP"],
            arm_endpoint=arm,
        )
    else:
        lines = wire(
            credential,
            subscriptions,
            environ["REMEDIATOR_EVENT_STORAGE_ID"],
            environ["REMEDIATOR_EVENT_QUEUE"],
            environ["REMEDIATOR_EVENTS_GROUP"],
            arm_endpoint=arm,
            location=environ.get("AZURE_LOCATION", ""),
        )
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(os.environ, sys.argv[1:]))
