"""azd postdeploy hook: deliver each remediated subscription's VM writes and starts to
the deployed ``on_vm_event`` function.

Why after the deployment and not in Bicep (docs/deploy.md): Event Grid validates an Azure
Function destination when the event subscription is written, and refuses one whose
function does not exist yet ("Endpoint validation: Destination endpoint not found");
azd provisions before it deploys code. Microsoft's Flex Consumption Event Grid quickstart
(Azure-Samples/functions-quickstart-python-azd-eventgrid-blob) does the same.

Per subscription: reuse its ``Microsoft.Resources.Subscriptions`` system topic if it has
one (only one is allowed per source), else create one in the subscription's own
remediator resource group (a system topic must live in its source's subscription; the
group is created if missing, as in a subscription that joined a management group); then
create or update the event subscription. Idempotent: run it again after adding a
subscription (`azd hooks run postdeploy`).

Settings (azd passes the deployment's outputs as environment variables):
AZURE_FUNCTION_APP_ID, REMEDIATOR_SUBSCRIPTIONS, REMEDIATOR_EVENTS_GROUP,
REMEDIATOR_ARM_ENDPOINT (default https://management.azure.com), AZURE_LOCATION (where a
missing events group is created). ``--subscriptions a,b`` wires those instead: the
report names the subscriptions that joined the scope through a management group and are
not wired yet (remediation/scope.py WIRE_COMMAND).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from azure.core import PipelineClient
from azure.core.credentials import TokenCredential
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from azure.core.pipeline.policies import RetryPolicy as HttpRetryPolicy
from azure.core.rest import HttpRequest
from azure.mgmt.eventgrid import EventGridManagementClient
from azure.mgmt.eventgrid.models import (
    AzureFunctionEventSubscriptionDestination,
    EventSubscription,
    EventSubscriptionFilter,
    RetryPolicy,
    StringInAdvancedFilter,
    SystemTopic,
)

from remediation.events import ACCEPTED

TOPIC_TYPE = "Microsoft.Resources.Subscriptions"
TOPIC_NAME = "remediator-subscription-events"
SUBSCRIPTION_NAME = "remediator-vm-events"
LEGACY_SUBSCRIPTION_NAME = "vm-write-and-start"  # what infra/events.bicep used to create
FUNCTION = "on_vm_event"
GROUPS_API = "2021-04-01"


def event_subscription(function_app_id: str) -> EventSubscription:
    """What the app accepts, and nothing else: every other event would be delivered only
    to be ignored (remediation/events.py ACCEPTED)."""
    return EventSubscription(
        destination=AzureFunctionEventSubscriptionDestination(
            resource_id=f"{function_app_id}/functions/{FUNCTION}",
            max_events_per_batch=1,
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


def wire(
    credential: TokenCredential,
    subscriptions: Iterable[str],
    function_app_id: str,
    events_group: str,
    arm_endpoint: str = "https://management.azure.com",
    *,
    location: str = "",
    **client_options: Any,
) -> list[str]:
    """Wire every subscription; returns one line per subscription saying what was done."""
    done = []
    for subscription in subscriptions:
        client = EventGridManagementClient(
            credential,
            subscription,
            base_url=arm_endpoint,
            credential_scopes=[f"{arm_endpoint}/.default"],
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
        else:
            group, name, how = events_group, TOPIC_NAME, "created"
            _ensure_group(credential, arm_endpoint, subscription, group, location)
            client.system_topics.begin_create_or_update(
                group, name, SystemTopic(location="global", source=source, topic_type=TOPIC_TYPE)
            ).result()
        client.system_topic_event_subscriptions.begin_create_or_update(
            group, name, SUBSCRIPTION_NAME, event_subscription(function_app_id)
        ).result()
        line = f"{subscription}: system topic {name} ({how}) -> {FUNCTION}"
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


def _ensure_group(
    credential: TokenCredential, arm: str, subscription: str, group: str, location: str
) -> None:
    """Create the events resource group (a PUT is idempotent): a subscription that joined
    a management group had no access.bicep deployment to create it. A group that exists
    in another region answers 409 InvalidResourceGroupLocation: it is there, and will do."""
    if not location:
        raise SystemExit("error: set AZURE_LOCATION: the events resource group needs a region")
    url = f"{arm}/subscriptions/{subscription}/resourcegroups/{group}?api-version={GROUPS_API}"
    body = {"location": location, "tags": {"created-by": "wire_events"}}
    client: PipelineClient[Any, Any] = PipelineClient(
        base_url=arm,
        policies=[HttpRetryPolicy(), BearerTokenCredentialPolicy(credential, f"{arm}/.default")],
    )
    response = client.send_request(HttpRequest("PUT", url, json=body))
    if response.status_code == 409 and "InvalidResourceGroupLocation" in response.text():
        return
    response.raise_for_status()


def main(environ: Mapping[str, str], argv: Sequence[str] = ()) -> int:
    from azure.identity import DefaultAzureCredential  # noqa: PLC0415 - azd's login

    parser = argparse.ArgumentParser(description="Wire Event Grid to the remediator.")
    parser.add_argument("--subscriptions", help="comma-separated ids (default: the deployment's)")
    args = parser.parse_args(argv)
    needed = ["AZURE_FUNCTION_APP_ID", "REMEDIATOR_EVENTS_GROUP"]
    if not args.subscriptions:
        needed.append("REMEDIATOR_SUBSCRIPTIONS")
    missing = [name for name in needed if not environ.get(name)]
    if missing:
        print(f"error: missing {', '.join(missing)} (run through azd)", file=sys.stderr)
        return 2
    listed = args.subscriptions or environ["REMEDIATOR_SUBSCRIPTIONS"]
    subscriptions = [s.strip() for s in listed.split(",") if s.strip()]
    lines = wire(
        DefaultAzureCredential(),
        subscriptions,
        environ["AZURE_FUNCTION_APP_ID"],
        environ["REMEDIATOR_EVENTS_GROUP"],
        environ.get("REMEDIATOR_ARM_ENDPOINT") or "https://management.azure.com",
        location=environ.get("AZURE_LOCATION", ""),
    )
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(os.environ, sys.argv[1:]))
