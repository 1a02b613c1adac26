"""The ARM gateway: the only module that imports ``azure.mgmt``.

Built once per worker from Settings. Every call is one or a few ARM requests through
the real SDK clients; SDK errors leave as the app's TransientError (retry later) or
PermanentError (a human must act), with messages an operator can act on. Onboarding
packages pass through here and are never logged or put in an exception.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.rest import HttpRequest
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import (
    RunCommandInput,
    VirtualMachineExtension,
    VirtualMachineExtensionProperties,
)
from azure.mgmt.resourcegraph import ResourceGraphClient
from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions
from azure.mgmt.security import SecurityCenter
from azure.mgmt.security.v2022_05_01.models import DataExportSettings
from azure.mgmt.security.v2024_01_01.models import Pricing

if TYPE_CHECKING:
    from azure.mgmt.hybridcompute import HybridComputeManagementClient

from remediation.azure_errors import error_message, failed_extension, sent, translate, translated
from remediation.classify import MDE_PUBLISHER, MDE_WINDOWS
from remediation.config import Settings
from remediation.defender import DeviceApi
from remediation.facts import (
    CONTAINERS_QUERY,
    SCALE_SETS_QUERY,
    SWEEP_QUERY,
    facts_from_arc,
    facts_from_arm,
    facts_from_graph,
    run_output,
    twin_query,
)
from remediation.model import (
    InstallResult,
    InvalidResourceId,
    Kind,
    PermanentError,
    Posture,
    TransientError,
    Unparsed,
    VmFacts,
    VmRef,
    dig,
    smbios_forms,
)
from remediation.pipeline import (
    BoundedRetryPolicy,
    RequestCounter,
    budget,
    build_credential,
    token_object_id,
)

log = logging.getLogger(__name__)

GRAPH_PAGE = 1000  # Resource Graph's largest page
GRAPH_SUBSCRIPTIONS = 1000  # subscriptions a request names at most (the Azure CLI batches them so)
SETTINGS = ("WDATP", "WDATP_UNIFIED_SOLUTION", "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW")
# A deadline for all the ARM calls of one handler, shorter than the worker's budget:
# Event Grid waits 30 s for an answer, then delivers again (delivery-and-retry docs).
_EVENTGRID_API = "2025-02-15"
# Microsoft.HybridCompute: machine and extension reads go through the pipeline raw;
# installs through azure-mgmt-hybridcompute (its default api-version, 2026-07-15).
HYBRID_API = "2026-07-15"
ALERTS_API = "2022-01-01"  # Microsoft.Security alerts (azure-rest-api-specs, stable/2022-01-01)
RUN_COMMAND_WAIT = 300.0  # seconds a worker waits for the detection test's Run Command
_RETRYABLE_READS = frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE", "POST"})


T = TypeVar("T")


def _raw_json(pipeline_response: Any, deserialized: Any, headers: Any) -> Any:
    """``cls=`` hook: the response's JSON as ARM sent it, without model round trips."""
    return json.loads(pipeline_response.http_response.text())


class ArmGateway:
    def __init__(
        self,
        settings: Settings,
        credential: TokenCredential | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._credential = credential or build_credential(settings)
        self._clock = clock
        self._lock = threading.Lock()
        self._compute: dict[str, ComputeManagementClient] = {}
        self._hybrid: dict[str, HybridComputeManagementClient] = {}
        self._security: dict[str, SecurityCenter] = {}
        self._graph: ResourceGraphClient | None = None
        self._mde: DeviceApi | None = None
        self._postures: dict[str, tuple[float, Posture]] = {}
        self._packages: dict[str, dict[str, Any]] = {}  # mdeOnboardings properties
        self._principal_id = settings.principal_id
        self.counter = RequestCounter()

    budget = staticmethod(budget)  # one handler's calls share a deadline (pipeline.py)

    # --- Clients, built once per worker -------------------------------------------------
    def _client_options(self) -> dict[str, Any]:
        endpoint = self._settings.arm_endpoint
        return {
            "base_url": endpoint,
            "credential_scopes": [f"{endpoint}/.default"],
            "custom_hook_policy": self.counter,
            "retry_policy": BoundedRetryPolicy(
                self._settings.retry_budget_seconds,
                retry_total=6,
                retry_backoff_factor=0.5,
                retry_backoff_max=30,
            ),
        }

    def _compute_client(self, subscription: str) -> ComputeManagementClient:
        with self._lock:
            if subscription not in self._compute:
                self._compute[subscription] = ComputeManagementClient(
                    self._credential, subscription, **self._client_options()
                )
            return self._compute[subscription]

    def _hybrid_client(self, subscription: str) -> HybridComputeManagementClient:
        # Imported when an Arc machine is first installed, not at cold start.
        from azure.mgmt.hybridcompute import HybridComputeManagementClient  # noqa: PLC0415

        with self._lock:
            if subscription not in self._hybrid:
                self._hybrid[subscription] = HybridComputeManagementClient(
                    self._credential, subscription, **self._client_options()
                )
            return self._hybrid[subscription]

    def _security_client(self, subscription: str) -> SecurityCenter:
        with self._lock:
            if subscription not in self._security:
                self._security[subscription] = SecurityCenter(
                    self._credential, subscription, **self._client_options()
                )
            return self._security[subscription]

    def _graph_client(self) -> ResourceGraphClient:
        with self._lock:
            if self._graph is None:
                self._graph = ResourceGraphClient(self._credential, **self._client_options())
            return self._graph

    # --- Identity -------------------------------------------------------------------------
    @property
    def principal_id(self) -> str:
        """The app's own object id: from settings, else read from its ARM token."""
        if not self._principal_id:
            token = self._call("reading the app's own token", self._token)
            self._principal_id = token_object_id(token)
        return self._principal_id

    def _token(self) -> str:
        return self._credential.get_token(f"{self._settings.arm_endpoint}/.default").token

    # --- Reads ----------------------------------------------------------------------------
    def vm_facts(self, vm: VmRef) -> VmFacts:
        """A VM: one request, GET with its instance view. An Arc machine: two, GET the
        machine and list its extensions (an Arc GET does not carry them)."""
        if vm.kind is Kind.ARC:
            what = f"reading Arc machine {vm}"
            machine = self._get(vm.subscription, vm.id, HYBRID_API, what)
            extensions = self._list(vm.subscription, f"{vm.id}/extensions", HYBRID_API, what)
            return facts_from_arc(machine, extensions)
        raw = self._call(
            f"reading VM {vm}",
            lambda: self._compute_client(vm.subscription).virtual_machines.get(
                vm.resource_group, vm.name, expand="instanceView", cls=_raw_json
            ),
        )
        return facts_from_arm(raw)

    def inventory(
        self, subscriptions: Iterable[str], on_total: Callable[[int], None] | None = None
    ) -> Iterator[VmFacts | Unparsed]:
        """Every VM and Arc machine of the subscriptions through Resource Graph: one
        request per 1000 machines, streamed page by page, never loaded whole. A machine
        whose id cannot be read comes as Unparsed: one machine skipped, not the run."""
        for row in self._graph_rows(SWEEP_QUERY, on_total, subscriptions=sorted(subscriptions)):
            try:
                yield facts_from_graph(row)
            except InvalidResourceId as error:
                yield Unparsed(str(row.get("id")), str(error))

    def azure_twin(self, subscriptions: Iterable[str], vm_uuid: str) -> str:
        """The id of the Azure VM (in these subscriptions) whose vmId is this SMBIOS id in
        either byte order; "" if none. One Resource Graph request."""
        forms = smbios_forms(vm_uuid)
        if not forms:
            return ""
        rows = self._graph_rows(twin_query(forms), None, subscriptions=sorted(subscriptions))
        return next((str(row.get("id") or "") for row in rows), "")

    def subscription_containers(
        self, management_groups: Iterable[str] = (), subscriptions: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """The subscriptions under the management groups, and the listed ones, with their
        display names, states and management-group chains: one query per scope and 1000
        subscriptions (a request names management groups or subscriptions, not both)."""
        rows: list[dict[str, Any]] = []
        if management_groups:
            scope = {"management_groups": sorted(management_groups)}
            try:
                rows += self._graph_rows(CONTAINERS_QUERY, None, **scope)
            except PermanentError as error:  # 400 ManagementGroupsContainInvalidIds, 403
                groups = ", ".join(scope["management_groups"])
                raise PermanentError(
                    f"{error} (REMEDIATION_MANAGEMENT_GROUPS: {groups})",
                    hint="give management group ids, not display names, and grant the app's "
                    "identity Reader (or infra/access-mg.bicep's role) at each group",
                    status=error.status,
                    code=error.code,
                ) from None
        for chunk in _chunks(sorted(subscriptions)):
            rows += self._graph_rows(CONTAINERS_QUERY, None, subscriptions=chunk)
        return rows

    def uniform_scale_sets(self, subscriptions: Iterable[str]) -> dict[str, tuple[int, int]]:
        """Per subscription: (uniform scale sets, their instances), one query per 1000."""
        return {
            str(row.get("subscriptionId") or "").lower(): (
                int(row.get("scaleSets") or 0),
                int(row.get("instances") or 0),
            )
            for chunk in _chunks(sorted(subscriptions))
            for row in self._graph_rows(SCALE_SETS_QUERY, None, subscriptions=chunk)
        }

    def _graph_rows(
        self, query: str, on_total: Callable[[int], None] | None, **scope: list[str]
    ) -> Iterator[dict[str, Any]]:
        skip_token: str | None = None
        while True:
            request = QueryRequest(
                query=query,
                subscriptions=scope.get("subscriptions"),
                management_groups=scope.get("management_groups"),
                options=QueryRequestOptions(
                    top=GRAPH_PAGE, skip_token=skip_token, result_format="objectArray"
                ),
            )
            page: dict[str, Any] = self._call(
                "querying Resource Graph", partial(self._graph_page, request)
            )
            if on_total is not None and skip_token is None:
                on_total(int(page.get("totalRecords") or 0))
            yield from page.get("data") or []
            skip_token = page.get("$skipToken")
            if not skip_token:
                return

    def _graph_page(self, request: QueryRequest) -> dict[str, Any]:
        # Queries are reads: let azure-core retry the POST on 5xx and lost connections.
        page = self._graph_client().resources(
            request, cls=_raw_json, retry_on_methods=_RETRYABLE_READS
        )
        return cast(dict[str, Any], page)

    def posture(self, subscription: str) -> Posture:
        """The plan and the integration settings: two requests, cached for the TTL."""
        now = self._clock()
        with self._lock:
            cached = self._postures.get(subscription)
        if cached and now - cached[0] < self._settings.posture_ttl_seconds:
            return cached[1]
        client = self._security_client(subscription)
        pricing = self._call(
            f"reading the Defender for Servers plan of subscription {subscription}",
            lambda: client.pricings.get(f"subscriptions/{subscription}", "VirtualMachines"),
        )
        settings = self._call(
            f"reading the Defender settings of subscription {subscription}",
            lambda: {
                item.name: bool(getattr(item, "enabled", False)) for item in client.settings.list()
            },
        )
        posture = Posture(
            subscription=subscription,
            pricing_tier=str(pricing.pricing_tier or "Free"),
            sub_plan=str(pricing.sub_plan or ""),
            wdatp=settings.get("WDATP", False),
            unified=settings.get("WDATP_UNIFIED_SOLUTION", False),
            exclude_linux=settings.get("WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW", True),
        )
        with self._lock:
            self._postures[subscription] = (now, posture)
        return posture

    def forget_posture(self, subscription: str) -> None:
        with self._lock:
            self._postures.pop(subscription, None)

    def vm_pricing(self, vm: VmRef) -> str | None:
        """The VM-level Defender pricing tier, or None when the VM inherits."""
        scope = vm.id.lstrip("/")  # the SDK wants the scope without its leading '/'
        raw = self._call(
            f"reading the VM-level pricing of {vm}",
            lambda: self._security_client(vm.subscription).pricings.get(
                scope, "VirtualMachines", cls=_raw_json
            ),
        )
        properties = raw.get("properties") or {}
        if str(properties.get("inherited", "")).lower() == "true":
            return None
        return str(properties.get("pricingTier") or "") or None

    def onboarding_package(self, subscription: str, extension_type: str) -> str:
        """The base64 onboarding package exactly as the API returned it. Cached; never
        logged. Read raw: the SDK's model would hand back decoded bytes."""
        with self._lock:
            packages = self._packages.get(subscription)
        if packages is None:  # one read answers for both operating systems
            raw = self._call(
                f"reading the MDE onboarding package of subscription {subscription}",
                lambda: self._security_client(subscription).mde_onboardings.get(cls=_raw_json),
            )
            packages = dict(raw.get("properties") or {})
            with self._lock:
                self._packages[subscription] = packages
        windows = extension_type == MDE_WINDOWS
        field = "onboardingPackageWindows" if windows else "onboardingPackageLinux"
        package = packages.get(field) or ""
        if not isinstance(package, str) or not package:
            raise PermanentError(
                f"subscription {subscription} returned no {field}",
                hint="check that Defender for Servers and the MDE integration are on",
            )
        try:
            base64.b64decode(package, validate=True)
        except ValueError:
            raise PermanentError(
                f"subscription {subscription} returned a {field} that is not base64",
                hint="open a support case with Defender for Cloud",
            ) from None
        return package

    # --- What the doctor reads -------------------------------------------------------------
    def permissions(self, subscription: str) -> list[tuple[list[str], list[str]]]:
        """The app's own effective permissions at the subscription: (actions, notActions)
        per role assignment, from Microsoft.Authorization/permissions."""
        items = self._list(
            subscription,
            f"/subscriptions/{subscription}/providers/Microsoft.Authorization/permissions",
            "2022-04-01",
            f"reading the app's permissions in subscription {subscription}",
        )
        return [
            (
                [str(a) for a in item.get("actions") or []],
                [str(a) for a in item.get("notActions") or []],
            )
            for item in items
        ]

    def event_wiring(self, subscription: str) -> list[tuple[str, list[str]]]:
        """The subscription's Microsoft.Resources.Subscriptions system topics with where
        their event subscriptions deliver: (topic id, [destinations]). A storage queue
        reads "<account id>/queueServices/default/queues/<queue>", whether it is reached
        with the topic's identity or not; any other destination, its resourceId."""
        what = f"reading the Event Grid system topics of subscription {subscription}"
        topics = self._list(
            subscription,
            f"/subscriptions/{subscription}/providers/Microsoft.EventGrid/systemTopics",
            _EVENTGRID_API,
            what,
        )
        wiring = []
        for topic in topics:
            properties = topic.get("properties") or {}
            source = str(properties.get("source") or "").lower()
            if source != f"/subscriptions/{subscription}" or not topic.get("id"):
                continue
            items = self._list(
                subscription, f"{topic['id']}/eventSubscriptions", _EVENTGRID_API, what
            )
            wiring.append((str(topic["id"]), [_destination(item) for item in items]))
        return wiring

    def defender_devices(self) -> Iterator[dict[str, Any]]:
        """Every device of Defender for Endpoint's inventory (defender.DeviceApi)."""
        with self._lock:
            if self._mde is None:
                retry = self._client_options()["retry_policy"]
                self._mde = DeviceApi(self._settings.mde_api, self._credential, retry, self.counter)
        return self._mde.devices()

    def _get(self, subscription: str, path: str, api_version: str, what: str) -> dict[str, Any]:
        """One ARM GET, raw, through the worker's pipeline."""
        url = f"{self._settings.arm_endpoint}{path}?api-version={api_version}"
        response = sent(what, self._compute_client(subscription), HttpRequest("GET", url))
        return cast(dict[str, Any], response.json())

    def _list(self, subscription: str, path: str, api_version: str, what: str) -> list[Any]:
        """A GET of an ARM list, following nextLink, through the worker's pipeline
        (credential, retries, counting) without one more SDK to import."""
        client = self._compute_client(subscription)
        url: str | None = f"{self._settings.arm_endpoint}{path}?api-version={api_version}"
        items: list[Any] = []
        while url:
            page = sent(what, client, HttpRequest("GET", url)).json()
            items += page.get("value") or []
            url = page.get("nextLink")
        return items

    def security_alerts(self, vm: VmRef) -> list[dict[str, Any]]:
        """Defender for Cloud's alerts in the VM's resource group (Alerts_ListByResourceGroup,
        api 2022-01-01, paged by nextLink)."""
        path = (
            f"/subscriptions/{vm.subscription}/resourceGroups/{vm.resource_group}"
            "/providers/Microsoft.Security/alerts"
        )
        what = f"reading Defender for Cloud's alerts of resource group {vm.resource_group}"
        return [
            a for a in self._list(vm.subscription, path, ALERTS_API, what) if isinstance(a, dict)
        ]

    # --- Writes ---------------------------------------------------------------------------
    def run_command(self, vm: VmRef, windows: bool, script: list[str]) -> tuple[str, str] | None:
        """Run a script through VM Run Command (one at a time per VM; the output is its
        last 4,096 bytes). (stdout, stderr), or None when it still runs after
        RUN_COMMAND_WAIT seconds (it goes on: a Run Command cannot be cancelled)."""
        compute = self._compute_client(vm.subscription)
        command = RunCommandInput(
            command_id="RunPowerShellScript" if windows else "RunShellScript", script=script
        )
        what = f"running the detection test on {vm}"
        poller = self._call(
            what,
            lambda: compute.virtual_machines.begin_run_command(
                vm.resource_group,
                vm.name,
                command,
                polling_interval=self._settings.lro_poll_seconds,
            ),
        )
        self._call(what, partial(poller.wait, RUN_COMMAND_WAIT))
        if not poller.done():
            return None
        result = self._call(what, poller.result)
        return run_output(
            (str(getattr(x, "code", "") or ""), str(getattr(x, "message", "") or ""))
            for x in getattr(result, "value", None) or []
        )

    def dismiss_alert(self, vm: VmRef, alert_id: str) -> None:
        """Dismiss one alert (POST .../alerts/{name}/dismiss, 204)."""
        client = self._compute_client(vm.subscription)
        url = f"{self._settings.arm_endpoint}{alert_id}/dismiss?api-version={ALERTS_API}"
        response = self._call(
            "dismissing the test alert", partial(client.send_request, HttpRequest("POST", url))
        )
        try:
            response.raise_for_status()
        except HttpResponseError as error:
            raise translate(error, "dismissing the test alert") from None

    def enable_plan(self, subscription: str, plan: str) -> None:
        client = self._security_client(subscription)
        self._call(
            f"enabling Defender for Servers {plan} on subscription {subscription}",
            lambda: client.pricings.update(
                f"subscriptions/{subscription}",
                "VirtualMachines",
                Pricing(pricing_tier="Standard", sub_plan=plan),
            ),
        )
        self.forget_posture(subscription)

    def set_setting(self, subscription: str, name: str, enabled: bool) -> None:
        if name not in SETTINGS:
            raise ValueError(f"not a Defender setting this app changes: {name}")
        client = self._security_client(subscription)
        self._call(
            f"setting {name}={str(enabled).lower()} on subscription {subscription}",
            lambda: client.settings.update(name, DataExportSettings(enabled=enabled)),
        )
        self.forget_posture(subscription)

    def install_extension(
        self, facts: VmFacts, extension_type: str, package: str, *, wait: bool = True
    ) -> InstallResult:
        """PUT the MDE extension as the built-in policy does and wait for it, at most
        REMEDIATION_INSTALL_TIMEOUT_SECONDS: a longer install is checked again later
        from a delayed queue message. ``wait=False`` returns once Azure accepted the PUT
        (``InProgress``), polling nothing: the event function's way (the queue watches).
        Idempotent: a second PUT of the same body is harmless. Compute takes one
        extension per publisher and type, so an MDE extension already on the VM under
        another name is reinstalled under that name."""
        vm = facts.vm
        name = next(
            (
                ext.name
                for ext in facts.extensions
                if ext.publisher.lower() == MDE_PUBLISHER.lower()
                and ext.type.lower() == extension_type.lower()
            ),
            extension_type,
        )
        settings: dict[str, str] = {"azureResourceId": vm.id}
        if extension_type == MDE_WINDOWS:
            settings["vNextEnabled"] = "true"
        properties: dict[str, Any] = {
            "publisher": MDE_PUBLISHER,
            "type": extension_type,
            "type_handler_version": "1.0",
            "auto_upgrade_minor_version": True,
            "settings": settings,
            "protected_settings": {"defenderForEndpointOnboardingScript": package},
        }
        poller = self._call(
            f"installing {extension_type} on {vm}",
            partial(self._begin_install, facts, name, properties, wait),
        )
        if not wait:
            return InstallResult("InProgress", extension=name)
        try:
            result = poller.result(timeout=self._settings.install_timeout_seconds)
        except HttpResponseError as error:
            if error.status_code == 200:  # the operation itself ended Failed
                message = error_message(error)
                return InstallResult("Failed", message, failed_extension(message) or name)
            raise translate(error, f"waiting for {extension_type} on {vm}") from None
        except (ServiceRequestError, ServiceResponseError) as error:
            raise TransientError(f"waiting for {extension_type} on {vm}: {error}") from None
        if not poller.done():
            return InstallResult("InProgress", extension=name)
        # Location-based polling (Arc's spec) ends with the extension, Failed or not; the
        # operation-status kind raised above. Read the outcome from the extension itself.
        if _provisioning_state(result).lower() == "failed":
            return InstallResult("Failed", f"{extension_type} ended Failed", name)
        return InstallResult("Succeeded", extension=name)

    def _begin_install(
        self, facts: VmFacts, name: str, properties: dict[str, Any], wait: bool
    ) -> Any:
        """PUT the extension: Compute's API for a VM, HybridCompute's for an Arc machine
        (the built-in "Deploy MDE on Arc machines" policies send the same properties).
        Without ``wait``, azure-core's NoPolling: the PUT's answer, no polling thread."""
        vm = facts.vm
        poll: dict[str, Any] = (
            {"polling_interval": self._settings.lro_poll_seconds} if wait else {"polling": False}
        )
        if vm.kind is Kind.ARC:
            from azure.mgmt.hybridcompute.models import (  # noqa: PLC0415 - see _hybrid_client
                MachineExtension,
                MachineExtensionProperties,
            )

            hybrid = self._hybrid_client(vm.subscription).machine_extensions
            body = MachineExtension(
                location=facts.location, properties=MachineExtensionProperties(**properties)
            )
            return hybrid.begin_create_or_update(vm.resource_group, vm.name, name, body, **poll)
        compute = self._compute_client(vm.subscription).virtual_machine_extensions
        return compute.begin_create_or_update(
            vm.resource_group,
            vm.name,
            name,
            VirtualMachineExtension(
                location=facts.location,
                properties=VirtualMachineExtensionProperties(**properties),
            ),
            **poll,
        )

    def _call(self, what: str, call: Callable[[], T]) -> T:
        return translated(what, call)


def _chunks(subscriptions: list[str], size: int = GRAPH_SUBSCRIPTIONS) -> list[list[str]]:
    return [subscriptions[i : i + size] for i in range(0, len(subscriptions), size)]


def _provisioning_state(extension: Any) -> str:
    """provisioningState of a VM extension model (top level) or an Arc one (properties)."""
    properties = getattr(extension, "properties", None)
    state = getattr(properties, "provisioning_state", None)
    return str(state or getattr(extension, "provisioning_state", None) or "")


def _destination(event_subscription: dict[str, Any]) -> str:
    properties = event_subscription.get("properties") or {}
    destination = properties.get("destination") or dig(
        properties, "deliveryWithResourceIdentity", "destination"
    )
    target = (destination or {}).get("properties") or {}
    resource = str(target.get("resourceId") or "")
    if (destination or {}).get("endpointType") == "StorageQueue":
        return f"{resource}/queueServices/default/queues/{target.get('queueName', '')}"
    return resource
