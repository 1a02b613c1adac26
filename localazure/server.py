"""A local Azure control plane on 127.0.0.1 over HTTPS: the HTTP server, the router
(authentication, api-versions, latency, injected faults, ARM's token buckets, the request
log) and the state the services share. What each service answers lives in its module:
identity, compute, hybrid (Arc-enabled servers), security, defender (Defender for
Endpoint's device inventory), graph and eventgrid. Runs in a thread (tests) or as
``python -m localazure``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import ssl
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa

from localazure import (
    authorization,
    compute,
    defender,
    eventgrid,
    graph,
    hybrid,
    identity,
    resources,
    security,
)
from localazure.estate import Estate, Principal, Subscription, Vm
from localazure.eventgrid import record_event
from localazure.machinery import (
    ArmError,
    FaultRule,
    Faults,
    LoggedRequest,
    Operation,
    RequestLog,
    Response,
    Route,
    TokenBucket,
    error_body,
    json_response,
    utc_now,
)

READS = (250, 25.0)  # ARM bucket per subscription and principal: capacity, refill per second
WRITES = (200, 10.0)

ROUTES: tuple[Route, ...] = (
    identity.ROUTES
    + compute.ROUTES
    + hybrid.ROUTES
    + security.ROUTES
    + defender.ROUTES
    + graph.ROUTES
    + eventgrid.ROUTES
    + authorization.ROUTES
    + resources.ROUTES
)
API_VERSIONS: dict[str, set[str]] = {
    **compute.API_VERSIONS,
    **hybrid.API_VERSIONS,
    **security.API_VERSIONS,
    **graph.API_VERSIONS,
    **eventgrid.API_VERSIONS,
    **authorization.API_VERSIONS,
    **resources.API_VERSIONS,
}


# --- The plane ------------------------------------------------------------------------
class LocalAzure:
    """Start with ``with LocalAzure(estate) as azure:``; point the app at ``azure.url``,
    ``azure.authority`` and ``azure.ca_path``."""

    def __init__(
        self,
        estate: Estate,
        *,
        latency: float = 0.0,
        throttle: bool = True,
        lro_seconds: float = 0.05,
        agent_report_seconds: float = 0.0,
        graph_lag_seconds: float = 0.0,
        list_page_size: int = 50,
        mde_limits: tuple[tuple[int, float], ...] = defender.MDE_LIMITS,
        test_alert_seconds: float = 600.0,
        reads: tuple[int, float] = READS,
        writes: tuple[int, float] = WRITES,
        faults: Faults | None = None,
        port: int = 0,
        state_dir: Path | None = None,
    ) -> None:
        self.estate = estate
        self.latency = latency
        self.throttle = throttle
        self.lro_seconds = lro_seconds
        # A created VM's guest agent reports after this long (a few minutes in Azure).
        self.agent_report_seconds = agent_report_seconds
        # Resource Graph answers from a copy this old at most (graph.py says why).
        self.graph_lag_seconds = graph_lag_seconds
        self.graph_copies: dict[str, tuple[float, dict[str, Any]]] = {}
        # Event Grid management state.
        self.system_topics: dict[str, dict[str, Any]] = {}
        self.resource_groups: dict[str, dict[str, Any]] = {}  # made by the wiring hook
        # Role assignments and custom roles, by lower-case id (authorization.py).
        self.role_assignments: dict[str, dict[str, Any]] = {}
        self.role_definitions: dict[str, dict[str, Any]] = {}
        self.registration_seconds = 0.0  # how long a provider stays Registering
        # Arc extension PUTs answer with Location only (the spec); True adds the
        # Azure-AsyncOperation header an older live trace shows (hybrid.py).
        self.arc_async_operation = False
        self.event_subscriptions: dict[str, dict[str, Any]] = {}
        self.list_page_size = list_page_size
        self.reads, self.writes = reads, writes
        self.faults = faults or Faults()
        self.log = RequestLog()
        self.lock = threading.RLock()
        self.operations: dict[str, Operation] = {}
        self.events: list[dict[str, Any]] = []
        # Whole PUT bodies as received, protected settings included, for contract tests.
        self.extension_puts: list[tuple[str, dict[str, Any]]] = []
        # Defender for Endpoint's API limits per caller: (calls, window seconds) each.
        self.mde_limits = mde_limits
        self._mde_calls: dict[str, deque[float]] = {}
        # Run Command: each run as received (VM id, body), for tests.
        self.run_commands: list[tuple[str, dict[str, Any]]] = []
        # Defender for Cloud alerts: raised (``alerts``), and detection-test alerts due
        # ``test_alert_seconds`` after the run ("about 10 minutes": alert-validation docs).
        self.test_alert_seconds = test_alert_seconds
        self.alerts: list[dict[str, Any]] = []
        self.pending_alerts: list[tuple[float, dict[str, Any]]] = []
        # An Event Grid custom topic at {url}/api/events, for the app's notifications.
        self.topic_key = base64.b64encode(uuid.uuid4().bytes).decode()
        self.published: list[dict[str, Any]] = []
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}
        self._graph_calls: dict[str, deque[float]] = {}
        # Entra signs its tokens RS256 with keys it publishes at the tenant's jwks_uri
        # (identity.py serves them); a "kid" header names the key.
        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = uuid.uuid4().hex
        # The requestedAccessTokenVersion of app registrations other than Microsoft's
        # APIs (the pages' registration, docs/monitoring.md): 2 unless a test says 1.
        self.api_token_version = 2
        self._dir = state_dir or Path(tempfile.mkdtemp(prefix="localazure-"))
        self._ca = trustme.CA()
        self.ca_path = str(self._dir / "localazure-ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self._server.plane = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    authority = url  # the token endpoint lives on the same host

    def start(self) -> LocalAzure:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalAzure:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def environment(self, principal: Principal) -> dict[str, str]:
        """The variables that point azure-identity and the app at this plane."""
        return {
            "AZURE_AUTHORITY_HOST": self.url,
            "AZURE_TENANT_ID": self.estate.tenant,
            "AZURE_CLIENT_ID": principal.client_id,
            "AZURE_CLIENT_SECRET": principal.secret,
            "REQUESTS_CA_BUNDLE": self.ca_path,
            "REMEDIATION_ARM_ENDPOINT": self.url,
        }

    # --- Changes made from outside ARM's API (portal users, deployments) --------------
    def create_vm(self, vm: Vm, caller: Principal | None = None) -> list[dict[str, Any]]:
        """Add a VM as a deployment would, or an Arc machine (``kind="arc"``) as
        ``azcmagent connect`` would; return the events ARM raises for it."""
        with self.lock:
            if vm.kind == "arc":
                # The agent creates the machine through ARM: one machines/write (the
                # operation name third-party Event Grid filters on; docs/fidelity.md).
                self.estate.add_vm(vm)
                return [record_event(self, "Write", hybrid.MACHINE_WRITE, vm.id, caller)]
            vm.agent_ready_at = time.time() + self.agent_report_seconds
            self.estate.add_vm(vm)
            # One deployment raises several writes: create, then the OS disk attach.
            first = record_event(
                self, "Write", "Microsoft.Compute/virtualMachines/write", vm.id, caller
            )
            second = record_event(
                self, "Write", "Microsoft.Compute/virtualMachines/write", vm.id, caller
            )
            return [first, second]

    def set_power(self, vm_id: str, power: str, caller: Principal | None = None) -> dict[str, Any]:
        with self.lock:
            vm = self._vm(vm_id)
            vm.power = power
            action = "start" if power == "running" else "deallocate"
            return record_event(
                self, "Action", f"Microsoft.Compute/virtualMachines/{action}/action", vm.id, caller
            )

    create_machine = create_vm

    def set_arc_status(self, machine_id: str, status: str) -> None:
        """An Arc machine's agent stops or resumes its heartbeats. Reconnected, the
        extension operations queued while it was away run. No event: the status comes
        from the agent's heartbeats, not from an ARM write (docs/fidelity.md: unconfirmed;
        a re-run `azcmagent connect` is create_machine's write)."""
        with self.lock:
            machine = self._vm(machine_id)
            if machine.kind != "arc":
                raise ValueError(f"{machine_id} is not an Arc machine")
            machine.arc_status = status
            machine.last_status_change = utc_now()
            if status == "Connected":
                now = time.monotonic()
                for operation in self.operations.values():
                    if operation.vm_key == machine.key and not operation.finished:
                        operation.done_at = min(operation.done_at, now + self.lro_seconds)

    def add_subscription(self, subscription: Subscription) -> Subscription:
        """A subscription created in (or moved into) the tenant."""
        with self.lock:
            return self.estate.add_subscription(subscription)

    def move_subscription(self, subscription_id: str, management_group_id: str) -> None:
        """Move a subscription under a management group ("" or the tenant id: the root
        group); a group that does not exist is a KeyError."""
        with self.lock:
            subscription = self.estate.subscriptions[subscription_id.lower()]
            if management_group_id.lower() in {"", self.estate.tenant.lower()}:
                subscription.management_group = ""
                return
            group = self.estate.group(management_group_id)
            if group is None:
                raise KeyError(f"no management group {management_group_id!r}")
            subscription.management_group = group.id

    def drain_events(self) -> list[dict[str, Any]]:
        with self.lock:
            events, self.events = self.events, []
            return events

    def settle(self, *, now: bool = False) -> None:
        """Finish every long-running operation that is due, and raise the alerts that are
        due; with ``now``, every one (their time has passed: tests wait on this, not on
        the clock)."""
        with self.lock:
            for operation in list(self.operations.values()):
                # An operation queued for a disconnected Arc machine (done_at inf) waits
                # for the machine, not for the clock.
                if now and math.isfinite(operation.done_at):
                    operation.done_at = min(operation.done_at, time.monotonic())
                self._advance(operation)
            security.raise_due_alerts(self, everything=now)

    # --- Request handling ---------------------------------------------------------------
    def handle(self, method: str, target: str, headers: Any, body: bytes) -> Response:
        parts = urlsplit(target)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        for route in ROUTES:
            if route.method != method:
                continue
            match = route.pattern.match(path)
            if match is None:
                continue
            # Path segments arrive percent-encoded (a resource group's name may hold any
            # letter: resource-name-rules); routes match the raw path, values are decoded.
            params = {key: value and unquote(value) for key, value in match.groupdict().items()}
            return self._dispatch(route, params, method, path, query, headers, body)
        return json_response(404, error_body("NotFound", f"no route for {method} {path}"))

    def _dispatch(
        self,
        route: Route,
        params: dict[str, str],
        method: str,
        path: str,
        query: dict[str, str],
        headers: Any,
        body: bytes,
    ) -> Response:
        subscription = params.get("sub", "").lower()
        principal = ""
        status = 500
        code = ""
        try:
            if route.api == "topic":
                if headers.get("aeg-sas-key") != self.topic_key:
                    raise ArmError(
                        401, "Unauthorized", "the aeg-sas-key header is missing or wrong"
                    )
                self._check_api_version(route.api, query)
            elif route.api == "mde":
                # Defender for Endpoint's API: its own audience and roles, no api-version,
                # its own limits; latency and faults as for ARM.
                caller, roles = defender.authenticate(self, headers)
                principal = caller.object_id
                defender.authorize(roles)
                if self._fault(method, path):
                    status = 0
                    return Response(0, b"", {})
                limits = defender.limit(self, principal)
            elif route.api:
                principal = self._authenticate(headers).object_id
                self._check_api_version(route.api, query)
                if subscription:
                    self._subscription_access(subscription, principal, route)
                if self._fault(method, path):
                    status = 0
                    return Response(0, b"", {})
                limits = self._limit(route, subscription, principal)
            else:  # the token endpoint: Entra ID has outages too (faults apply)
                if self.faults.rules and self._fault(method, path):
                    status = 0
                    return Response(0, b"", {})
                limits = {}
            payload = json.loads(body) if body else None
            with self.lock:
                response = route.handler(self, params, query, payload, principal)
            response.headers.update(limits)
            status = response.status
            return response
        except ArmError as error:
            status, code = error.status, error.code
            return json_response(
                error.status,
                error_body(error.code, error.message, error.inner, error.target, error.details),
                error.headers,
            )
        except json.JSONDecodeError:
            status = 400
            return json_response(400, error_body("InvalidRequestContent", "the body is not JSON"))
        finally:
            self.log.add(
                LoggedRequest(
                    time.time(),
                    method,
                    path,
                    route.operation,
                    principal,
                    subscription,
                    status,
                    code,
                )
            )

    def _subscription_access(self, subscription: str, principal: str, route: Route) -> None:
        """Anything under a subscription the tenant does not have is 404
        SubscriptionNotFound; under one the caller holds no role in, 403
        AuthorizationFailed (ARM's texts: Azure/azure-cli#33657 and
        microsoft/AzureStorageExplorer#5298 quote the 404; Microsoft Learn's
        "create-azure-rm-service-principal-manual" troubleshooting page the 403)."""
        known = self.estate.subscriptions.get(subscription)
        if known is None:
            raise ArmError(
                404,
                "SubscriptionNotFound",
                f"The subscription '{subscription}' could not be found.",
            )
        if known.no_access:
            who = self._principal_by_oid(principal)
            raise ArmError(
                403,
                "AuthorizationFailed",
                f"The client '{who.client_id if who else principal}' with object id "
                f"'{principal}' does not have authorization to perform action "
                f"'{route.operation or 'Microsoft.Resources/subscriptions/read'}' over scope "
                f"'/subscriptions/{subscription}' or the scope is invalid. If access was "
                "recently granted, please refresh your credentials.",
            )

    def _fault(self, method: str, path: str) -> bool:
        """The configured latency, then an injected fault: True to drop the connection,
        an ArmError for an injected status."""
        if self.latency:
            time.sleep(self.latency)
        fault = self.faults.pick(method, path)
        if fault == "drop" or (isinstance(fault, FaultRule) and fault.status == 0):
            return True
        if isinstance(fault, FaultRule):
            raise ArmError(fault.status, "InjectedFault", "injected fault", fault.headers)
        return False

    def _authenticate(self, headers: Any) -> Principal:
        auth = headers.get("Authorization", "")
        challenge = {"WWW-Authenticate": f'Bearer authorization_uri="{self.url}"'}
        if not auth.startswith("Bearer "):
            raise ArmError(401, "AuthenticationFailed", "no bearer token", challenge)
        try:
            claims = self.read_token(auth[7:], self._audiences())
        except jwt.PyJWTError as error:
            raise ArmError(401, "InvalidAuthenticationToken", str(error), challenge) from None
        for principal in self.estate.principals.values():
            if principal.object_id == claims.get("oid"):
                return principal
        raise ArmError(401, "InvalidAuthenticationToken", "unknown principal", challenge)

    def _audiences(self) -> list[str]:
        """ARM's audiences; never Defender for Endpoint's (defender.MDE_AUDIENCE)."""
        return [
            self.url,
            self.url + "/",
            "https://management.azure.com",
            "https://management.azure.com/",
        ]

    @staticmethod
    def _check_api_version(api: str, query: dict[str, str]) -> None:
        version = query.get("api-version", "")
        if version not in API_VERSIONS[api]:
            supported = ", ".join(sorted(API_VERSIONS[api]))
            raise ArmError(
                400,
                "NoRegisteredProviderFound" if version else "MissingApiVersionParameter",
                f"api-version '{version}' is not supported; the supported versions are "
                f"'{supported}'.",
            )

    def _limit(self, route: Route, subscription: str, principal: str) -> dict[str, str]:
        if route.api == "graph":
            return graph.user_quota(self, principal)
        if not self.throttle or not subscription:
            return {}
        kind = "reads" if route.method == "GET" else "writes"
        capacity, rate = self.reads if kind == "reads" else self.writes
        with self.lock:
            bucket = self._buckets.setdefault(
                (subscription, principal, kind), TokenBucket(capacity, rate)
            )
            granted, left, wait = bucket.take()
        header = f"x-ms-ratelimit-remaining-subscription-{kind}"
        if not granted:
            raise ArmError(
                429,
                "TooManyRequests",
                f"The request is throttled: the subscription's {kind} bucket is empty.",
                {"Retry-After": str(max(1, math.ceil(wait))), header: "0"},
            )
        return {header: str(left)}

    # --- Shared by the services -----------------------------------------------------------
    def _vm(self, vm_id: str) -> Vm:
        """The VM or Arc machine of this id (its provider is part of the id), else 404."""
        vm = self.estate.vm(vm_id)
        if vm is None:
            name = vm_id.rsplit("/", 1)[-1]
            if "/microsoft.hybridcompute/machines/" in vm_id.lower():
                group = vm_id.split("/")[4] if vm_id.count("/") > 4 else ""
                raise ArmError(
                    404,
                    "ResourceNotFound",
                    f"The Resource 'Microsoft.HybridCompute/machines/{name}' under resource "
                    f"group '{group}' was not found. For more details please go to "
                    "https://aka.ms/ARMResourceNotFoundFix",
                )
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/virtualMachines/{name}' was not found.",
            )
        return vm

    def sign(self, claims: dict[str, Any], key: Any = None) -> str:
        """A token as Entra signs it (tests pass another ``key`` to forge one)."""
        return jwt.encode(
            claims, key or self._signing_key, algorithm="RS256", headers={"kid": self.key_id}
        )

    def read_token(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """The claims of a token this plane signed, for one of ``audiences``."""
        public = self._signing_key.public_key()
        return jwt.decode(token, public, algorithms=["RS256"], audience=audiences)

    def jwks(self) -> dict[str, Any]:
        """The public keys, as the tenant's jwks_uri publishes them."""
        key = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._signing_key.public_key()))
        return {"keys": [key | {"kid": self.key_id, "use": "sig", "kty": "RSA"}]}

    def _principal_by_oid(self, object_id: str) -> Principal | None:
        return next((p for p in self.estate.principals.values() if p.object_id == object_id), None)

    def _start_operation(
        self,
        vm: Vm,
        finish: Callable[[], None],
        error: dict[str, str] | None = None,
        kind: str = "",
    ) -> Operation:
        operation = Operation(
            id=str(uuid.uuid4()),
            vm_key=vm.key,
            done_at=time.monotonic() + self.lro_seconds,
            finish=finish,
            error=error,
            started=utc_now(),
            kind=kind,
        )
        self.operations[operation.id] = operation
        return operation

    def _advance(self, operation: Operation) -> None:
        if not operation.finished and time.monotonic() >= operation.done_at:
            operation.finished = True
            operation.finish()

    def _advance_all(self) -> None:
        with self.lock:
            for operation in list(self.operations.values()):
                self._advance(operation)

    def _in_flight(self, vm: Vm) -> bool:
        for operation in self.operations.values():
            self._advance(operation)
            if operation.vm_key == vm.key and not operation.finished:
                return True
        return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: the headers and the body leave in two writes; with Nagle's algorithm
    # and the client's delayed ACK the second waited ~40 ms, so every request took about
    # 45 ms more than the latency the plane models (measured with Cloud Custodian's
    # requests, issue 15).
    disable_nagle_algorithm = True
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the plane keeps its own request log; nothing goes to stderr

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = raw
        if self.path.split("?")[0].endswith("/oauth2/v2.0/token"):
            form = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
            body = json.dumps(form).encode()
        response = self.server.plane.handle(self.command, self.path, self.headers, body)
        if response.status == 0:  # an injected dropped connection
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve
