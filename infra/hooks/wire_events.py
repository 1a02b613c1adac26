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

Each deployment (azd environment) has its own event subscription,
``remediator-vm-events-<storage account>``: a subscription has one system topic, which two
deployments share, and each wires, and later removes, only its own.

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
deployment's event subscription, the events group its environment made (with the topic in
it, unless that topic still delivers to another deployment), the app's role assignments
at the subscription and the custom role.

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
# One event subscription per deployment: a subscription has one system topic, which two
# deployments (two azd environments) share; each names its own after its storage account.
SUBSCRIPTION_PREFIX = "remediator-vm-events-"
# What earlier releases created, removed when found delivering to this app: the first
# release's Bicep (vm-write-and-start), then the Azure Function destination era.
LEGACY_SUBSCRIPTION_NAMES = ("vm-write-and-start", "remediator-vm-events")
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


def subscription_name(storage_id: str) -> str:
    """This deployment's event subscription: named after its storage account."""
    return SUBSCRIPTION_PREFIX + storage_id.rstrip("/").rsplit("/", 1)[-1].lower()


def _group_of(resource_id: str) -> str:
    parts = resource_id.split("/")
    return parts[[part.lower() for part in parts].index("resourcegroups") + 1]


def _destination(item: Any) -> Any:
    delivery = item.delivery_with_resource_identity
    return delivery.destination if delivery is not None else item.destination


def _ours(item: Any, storage_id: str, queue: str) -> bool:
    """An event subscription that delivers to this deployment's queue."""
    destination = _destination(item)
    return (
        isinstance(destination, StorageQueueEventSubscriptionDestination)
        and (destination.resource_id or "").lower() == storage_id.lower()
        and destination.queue_name == queue
    )


def _earlier_release(item: Any, storage_id: str, queue: str) -> bool:
    """An earlier release's event subscription (by its name) that delivers to this app:
    its queue, or an on_vm_event function (the Azure Function destination it used)."""
    target = (getattr(_destination(item), "resource_id", "") or "").lower()
    return item.name in LEGACY_SUBSCRIPTION_NAMES and (
        _ours(item, storage_id, queue) or target.endswith(f"/functions/{FUNCTION}")
    )


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

    def pages(self, path: str, api: str) -> Iterator[dict[str, Any]]:
        """Every item of a list, following nextLink."""
        page: Any = self.ok("GET", path, api)
        while True:
            yield from page.get("value") or []
            link = page.get("nextLink")
            if not link:
                return
            response = self.client.send_request(HttpRequest("GET", link))
            response.raise_for_status()
            page = response.json()

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
    environment: str = "",
    poll_seconds: float = 5,
    **client_options: Any,
) -> list[str]:
    """Wire every subscription; returns one line per subscription saying what was done."""
    name_of_ours = subscription_name(storage_id)
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
                # Keep a user-assigned identity the topic has: add the system one beside it.
                held = existing.identity.user_assigned_identities if existing.identity else None
                existing.identity = IdentityInfo(
                    type="SystemAssigned, UserAssigned" if held else "SystemAssigned",
                    user_assigned_identities=held or None,
                )
                topic = client.system_topics.begin_create_or_update(group, name, existing).result()
                how = "reused, identity added"
        else:
            group, name, how = events_group, TOPIC_NAME, "created"
            _ensure_group(arm, subscription, group, location, environment)
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
            group, name, name_of_ours, event_subscription(storage_id, queue)
        ).result()
        line = f"{subscription}: {registered}system topic {name} ({how}) -> queue {queue}"
        # An earlier release wired the same events under another name: two subscriptions
        # would deliver every event twice. Only one that delivers to this app goes.
        for item in client.system_topic_event_subscriptions.list_by_system_topic(group, name):
            if _earlier_release(item, storage_id, queue):
                client.system_topic_event_subscriptions.begin_delete(
                    group, name, item.name
                ).result()
                line += f"; removed the older {item.name}"
        done.append(line)
    return done


def _ensure_group(arm: Arm, subscription: str, group: str, location: str, environment: str) -> None:
    """Create the events resource group when it is missing: a subscription that joined a
    management group had no access.bicep deployment to create it. One that exists is left
    as it is (a PUT would replace its tags, and the removal reads them)."""
    path = f"/subscriptions/{subscription}/resourcegroups/{group}"
    if arm.send("GET", path, RESOURCES_API).status_code == 200:
        return
    if not location:
        raise SystemExit("error: set AZURE_LOCATION: the events resource group needs a region")
    tags = {"created-by": "wire_events"} | ({"azd-env-name": environment} if environment else {})
    arm.ok("PUT", path, RESOURCES_API, {"location": location, "tags": tags})


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
    storage_id: str,
    queue: str,
    arm_endpoint: str = "https://management.azure.com",
    **client_options: Any,
) -> list[str]:
    """Undo, per subscription, what azd down leaves: this deployment's event subscription
    (from any system topic; another deployment's stays), the events group this
    environment made (kept while a topic in it still delivers elsewhere), the app's role
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
        others_in_group = []
        for topic in client.system_topics.list_by_subscription():
            if not topic.id or not topic.name:
                continue
            group = _group_of(topic.id)
            for item in client.system_topic_event_subscriptions.list_by_system_topic(
                group, topic.name
            ):
                if _ours(item, storage_id, queue):
                    client.system_topic_event_subscriptions.begin_delete(
                        group, topic.name, item.name
                    ).result()
                    removed.append(f"event subscription {item.name}")
                elif group.lower() == events_group.lower():
                    others_in_group.append(f"{topic.name}/{item.name}")
        group_path = f"/subscriptions/{subscription}/resourcegroups/{events_group}"
        group = arm.send("GET", group_path, RESOURCES_API)
        tags = (group.json().get("tags") or {}) if group.status_code == 200 else {}
        if tags.get("azd-env-name") == environment and others_in_group:
            removed.append(
                f"nothing of resource group {events_group}: its topic still delivers to "
                f"{', '.join(others_in_group)}"
            )
        elif tags.get("azd-env-name") == environment:
            arm.delete_waiting(group_path, RESOURCES_API)
            removed.append(f"resource group {events_group}")
        authorization = f"/subscriptions/{subscription}/providers/Microsoft.Authorization"
        held_by = quote(f"principalId eq '{principal_id}'")
        for assignment in arm.pages(
            f"{authorization}/roleAssignments?$filter={held_by}", AUTHORIZATION_API
        ):
            scope = str((assignment.get("properties") or {}).get("scope") or "")
            if scope.lower() == f"/subscriptions/{subscription}".lower():  # not above, below
                arm.delete_waiting(assignment["id"], AUTHORIZATION_API)
                removed.append(f"role assignment {assignment['name']}")
        role_name = ROLE_NAME.format(environment=environment, subscription=subscription)
        named = quote(f"roleName eq '{role_name}'")
        for definition in arm.pages(
            f"{authorization}/roleDefinitions?$filter={named}", AUTHORIZATION_API
        ):
            arm.delete_waiting(definition["id"], AUTHORIZATION_API)
            removed.append(f"custom role '{role_name}'")
        done.append(f"{subscription}: removed {', '.join(removed) if removed else 'nothing'}")
    return done


def main(environ: Mapping[str, str], argv: Sequence[str] = ()) -> int:
    from azure.identity import DefaultAzureCredential  # noqa: PLC0415 - azd's login

    parser = argparse.ArgumentParser(description="Wire Event Grid to the remediator.")
    parser.add_argument("--subscriptions", help="comma-separated ids (default: the deployment's)")
    parser.add_argument(
        "--remove", action="store_true", help="remove what azd down leaves behind (postdown)"
    )
    args = parser.parse_args(argv)
    needed = ["REMEDIATOR_EVENTS_GROUP"]
    needed += ["REMEDIATOR_EVENT_STORAGE_ID", "REMEDIATOR_EVENT_QUEUE"]
    if args.remove:
        needed += ["AZURE_ENV_NAME", "REMEDIATOR_PRINCIPAL_ID"]
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
            storage_id=environ["REMEDIATOR_EVENT_STORAGE_ID"],
            queue=environ["REMEDIATOR_EVENT_QUEUE"],
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
            environment=environ.get("AZURE_ENV_NAME", ""),
        )
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(os.environ, sys.argv[1:]))
