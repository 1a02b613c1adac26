"""Settings: one frozen value, loaded once, every problem reported at once.

Production passes ``os.environ``; tests pass plain dicts. Names are public: deployment
templates, the README and operators use them, so they never change casually.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar, cast
from urllib.parse import urlsplit

# \Z, not $: "$" also matches before a trailing newline, so "<guid>\n" would pass.
GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")
# Storage naming rules: queues 3-63 lowercase letters, digits and single hyphens;
# tables 3-63 alphanumerics starting with a letter.
QUEUE_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
# An app role's value: no spaces; letters, digits and . _ - (Entra's appRoles "value").
APP_ROLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}\Z")
TAG_NAME = re.compile(r"^[^<>%&\\?/]{1,512}$")
NCRONTAB_FIELD = re.compile(r"^[0-9*/,\-A-Za-z]+$")

# Authorities whose instance discovery azure-identity knows; any other authority host
# (a sovereign cloud's is in this list too) gets discovery disabled so it can be reached.
MICROSOFT_AUTHORITIES = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.microsoftonline.de",
    }
)


# The storage endpoint suffix of each cloud, by its ARM host (the clouds azure-identity
# and Bicep's environment() know: AzureCloud, AzureUSGovernment, AzureChinaCloud).
STORAGE_SUFFIXES = {
    "management.azure.com": "core.windows.net",
    "management.usgovcloudapi.net": "core.usgovcloudapi.net",
    "management.chinacloudapi.cn": "core.chinacloudapi.cn",
}


class Mode(StrEnum):
    REPORT = "report"
    ENFORCE = "enforce"


class SettingsError(ValueError):
    """Every bad setting, one line each, so an operator fixes them in one pass."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "invalid settings:\n" + "\n".join(f"  - {problem}" for problem in problems)
        )


@dataclass(frozen=True, slots=True)
class Settings:
    mode: Mode
    subscriptions: frozenset[str]  # listed; with management_groups, the scope is resolved
    allow_plan_change: bool | frozenset[str]  # everywhere, nowhere, or these subscriptions
    servers_plan: str
    enable_integration: bool
    exclude_tag: str
    max_actions_per_sweep: int
    sweep_schedule: str
    arm_endpoint: str
    principal_id: str
    install_queue: str
    audit_table: str
    max_reinstalls: int
    posture_ttl_seconds: int
    retry_budget_seconds: int
    lro_poll_seconds: float
    install_timeout_seconds: int
    install_cooldown_seconds: int
    event_budget_seconds: int
    recheck_seconds: int
    recheck_minutes: int
    sweep_queue: str
    sweep_batch_size: int
    authority_host: str
    storage_connection: str = field(repr=False)  # may hold an account key
    storage_account: str
    audit_retention_days: int
    notify_endpoint: str
    notify_key: str = field(repr=False)
    pages_sign_in: bool = False  # the report, log and status pages: Entra tokens (signin.py)
    pages_tenant: str = ""  # the tenant that issues the pages' tokens
    pages_audience: str = ""  # the pages' app registration (client id)
    pages_allowed: frozenset[str] = frozenset()  # app roles or group object ids let in
    mde_api: str = ""  # Defender for Endpoint's API base URL; "" = verification off
    verify_grace_hours: int = 24
    allow_test_alert: bool = False
    test_alert_queue: str = "mde-test-alerts"
    test_alert_timeout_minutes: int = 60
    dismiss_test_alerts: bool = False
    management_groups: frozenset[str] = frozenset()  # every subscription under them is in scope
    event_queue: str = "vm-events"  # Event Grid's StorageQueue destination: on_vm_event reads it
    app_name: str = ""  # WEBSITE_SITE_NAME, which Azure sets: the doctor's "this app"

    @property
    def enforce(self) -> bool:
        return self.mode is Mode.ENFORCE

    @property
    def poison_queue(self) -> str:
        return f"{self.install_queue}-poison"

    @property
    def event_poison_queue(self) -> str:
        return f"{self.event_queue}-poison"

    @property
    def sweep_poison_queue(self) -> str:
        return f"{self.sweep_queue}-poison"

    @property
    def test_alert_poison_queue(self) -> str:
        return f"{self.test_alert_queue}-poison"

    @property
    def disable_instance_discovery(self) -> bool:
        """A private (or test) authority has no Microsoft discovery endpoint."""
        host = urlsplit(self.authority_host).hostname or ""
        return bool(self.authority_host) and host not in MICROSOFT_AUTHORITIES

    @property
    def storage_suffix(self) -> str:
        """The storage endpoint suffix of the ARM endpoint's cloud."""
        return STORAGE_SUFFIXES.get(urlsplit(self.arm_endpoint).hostname or "", "")

    def plan_change_allowed(self, subscription_id: str) -> bool:
        if isinstance(self.allow_plan_change, frozenset):
            return subscription_id.lower() in self.allow_plan_change
        return self.allow_plan_change


T = TypeVar("T")


def load(environ: Mapping[str, str]) -> Settings:  # noqa: PLR0915 - one line a setting
    """Read and check every setting; raise SettingsError naming each bad one."""
    problems: list[str] = []

    def get(name: str, default: str) -> str:
        return environ.get(name, default).strip()

    def parse(name: str, default: str, convert: Callable[[str], T]) -> T:
        raw = get(name, default)
        try:
            return convert(raw)
        except ValueError as error:
            problems.append(f"{name}={raw!r}: {error}")
            return cast(T, None)  # never used: load raises once a problem is recorded

    mode = parse("REMEDIATION_MODE", "report", _mode)
    subscriptions = parse("REMEDIATION_SUBSCRIPTIONS", "", _listed_subscriptions)
    management_groups = parse("REMEDIATION_MANAGEMENT_GROUPS", "", _management_groups)
    if subscriptions == frozenset() and management_groups == frozenset():
        listed = get("REMEDIATION_SUBSCRIPTIONS", "")
        problems.append(
            f"REMEDIATION_SUBSCRIPTIONS={listed!r}: required: a comma-separated list of "
            "subscription ids (or set REMEDIATION_MANAGEMENT_GROUPS)"
        )
    allow_plan_change = parse("REMEDIATION_ALLOW_PLAN_CHANGE", "false", _plan_change)
    # Under management groups the scope is known only when resolved: not checked here.
    if (
        isinstance(allow_plan_change, frozenset)
        and subscriptions is not None
        and not management_groups
        and not allow_plan_change <= subscriptions
    ):
        outside = ", ".join(sorted(allow_plan_change - subscriptions))
        problems.append(
            f"REMEDIATION_ALLOW_PLAN_CHANGE: names subscriptions outside "
            f"REMEDIATION_SUBSCRIPTIONS: {outside}"
        )
    servers_plan = parse("REMEDIATION_SERVERS_PLAN", "P1", _plan)
    enable_integration = parse("REMEDIATION_ENABLE_INTEGRATION", "true", _boolean)
    exclude_tag = parse("REMEDIATION_EXCLUDE_TAG", "defender-remediation-exclude", _tag_name)
    max_actions = parse("REMEDIATION_MAX_ACTIONS_PER_SWEEP", "500", _bounded_int(1, 100_000))
    schedule = parse("REMEDIATION_SWEEP_SCHEDULE", "0 0 2 * * *", _ncrontab)
    arm_endpoint = parse("REMEDIATION_ARM_ENDPOINT", "https://management.azure.com", _https_url)
    principal_id = parse("REMEDIATION_PRINCIPAL_ID", "", _optional_guid)
    install_queue = parse("REMEDIATION_INSTALL_QUEUE", "mde-installs", _queue_name)
    event_queue = parse("REMEDIATION_EVENT_QUEUE", "vm-events", _queue_name)
    audit_table = parse("REMEDIATION_AUDIT_TABLE", "remediationlog", _table_name)
    max_reinstalls = parse("REMEDIATION_MAX_REINSTALLS", "2", _bounded_int(0, 10))
    posture_ttl = parse("REMEDIATION_POSTURE_TTL_SECONDS", "300", _bounded_int(0, 86_400))
    retry_budget = parse("REMEDIATION_RETRY_BUDGET_SECONDS", "120", _bounded_int(1, 3_600))
    lro_poll = parse("REMEDIATION_LRO_POLL_SECONDS", "10", _poll_seconds)
    # One function waits this long for an install, then re-checks from delayed queue
    # messages every REMEDIATION_RECHECK_SECONDS for up to REMEDIATION_RECHECK_MINUTES.
    install_timeout = parse("REMEDIATION_INSTALL_TIMEOUT_SECONDS", "60", _bounded_int(1, 600))
    recheck_seconds = parse("REMEDIATION_RECHECK_SECONDS", "120", _bounded_int(1, 3_600))
    recheck_minutes = parse("REMEDIATION_RECHECK_MINUTES", "60", _bounded_int(1, 1_440))
    # One event's ARM calls give up after this; the event queue's retries do the rest.
    event_budget = parse("REMEDIATION_EVENT_BUDGET_SECONDS", "10", _bounded_int(1, 25))
    install_cooldown = parse("REMEDIATION_INSTALL_COOLDOWN_SECONDS", "900", _bounded_int(0, 86_400))
    sweep_queue = parse("REMEDIATION_SWEEP_QUEUE", "sweep-batches", _queue_name)
    sweep_batch = parse("REMEDIATION_SWEEP_BATCH_SIZE", "20", _bounded_int(1, 1_000))
    authority_host = parse("AZURE_AUTHORITY_HOST", "", _optional_https_url)
    retention = parse("REMEDIATION_AUDIT_RETENTION_DAYS", "400", _bounded_int(1, 3_650))
    notify_endpoint = parse("REMEDIATION_NOTIFY_TOPIC_ENDPOINT", "", _optional_topic_url)
    notify_key = get("REMEDIATION_NOTIFY_TOPIC_KEY", "")
    pages_sign_in = parse("REMEDIATION_PAGES_SIGN_IN", "", _sign_in)
    pages_tenant = parse("REMEDIATION_PAGES_TENANT", "", _optional_guid)
    pages_audience = parse("REMEDIATION_PAGES_AUDIENCE", "", _optional_guid)
    pages_allowed = parse("REMEDIATION_PAGES_ALLOWED", "", _allowed)
    if pages_sign_in:
        for name, value in (
            ("REMEDIATION_PAGES_TENANT", pages_tenant),
            ("REMEDIATION_PAGES_AUDIENCE", pages_audience),
            ("REMEDIATION_PAGES_ALLOWED", pages_allowed),
        ):
            if not value:
                problems.append(f"{name}: required with REMEDIATION_PAGES_SIGN_IN=entra")
    # Verified protection: Defender for Endpoint's device list, and the test alert.
    mde_api = parse("REMEDIATION_MDE_API", "", _optional_https_url)
    verify_grace = parse("REMEDIATION_VERIFY_GRACE_HOURS", "24", _bounded_int(1, 720))
    allow_test_alert = parse("REMEDIATION_ALLOW_TEST_ALERT", "false", _boolean)
    test_alert_queue = parse("REMEDIATION_TEST_ALERT_QUEUE", "mde-test-alerts", _queue_name)
    test_alert_timeout = parse(
        "REMEDIATION_TEST_ALERT_TIMEOUT_MINUTES", "60", _bounded_int(5, 1_440)
    )
    dismiss_test_alerts = parse("REMEDIATION_DISMISS_TEST_ALERTS", "false", _boolean)
    if notify_key and not get("REMEDIATION_NOTIFY_TOPIC_ENDPOINT", ""):
        problems.append(
            "REMEDIATION_NOTIFY_TOPIC_KEY: set without REMEDIATION_NOTIFY_TOPIC_ENDPOINT"
        )

    storage_connection = get("AzureWebJobsStorage", "")
    storage_account = get("AzureWebJobsStorage__accountName", "")
    if not storage_connection and not storage_account:
        problems.append(
            "AzureWebJobsStorage: required (a connection string, or "
            "AzureWebJobsStorage__accountName for identity-based access)"
        )
    if storage_connection and (problem := _connection_string_problem(storage_connection)):
        problems.append(
            f"AzureWebJobsStorage: {problem} (the value is not shown: it may hold a key)"
        )
    arm_host = urlsplit(arm_endpoint or "").hostname or ""
    unknown_cloud = arm_endpoint and arm_host not in STORAGE_SUFFIXES
    if storage_account and not storage_connection and unknown_cloud:
        problems.append(
            "AzureWebJobsStorage__accountName: the storage endpoint of the cloud of "
            f"REMEDIATION_ARM_ENDPOINT ({arm_host}) is not known: use an AzureWebJobsStorage "
            "connection string"
        )

    if problems:
        raise SettingsError(problems)
    return Settings(
        mode=mode,
        subscriptions=subscriptions,
        allow_plan_change=allow_plan_change,
        servers_plan=servers_plan,
        enable_integration=enable_integration,
        exclude_tag=exclude_tag,
        max_actions_per_sweep=max_actions,
        sweep_schedule=schedule,
        arm_endpoint=arm_endpoint,
        principal_id=principal_id,
        install_queue=install_queue,
        event_queue=event_queue,
        audit_table=audit_table,
        max_reinstalls=max_reinstalls,
        posture_ttl_seconds=posture_ttl,
        retry_budget_seconds=retry_budget,
        lro_poll_seconds=lro_poll,
        install_timeout_seconds=install_timeout,
        install_cooldown_seconds=install_cooldown,
        event_budget_seconds=event_budget,
        recheck_seconds=recheck_seconds,
        recheck_minutes=recheck_minutes,
        sweep_queue=sweep_queue,
        sweep_batch_size=sweep_batch,
        authority_host=authority_host,
        storage_connection=storage_connection,
        storage_account=storage_account,
        audit_retention_days=retention,
        notify_endpoint=notify_endpoint,
        notify_key=notify_key,
        pages_sign_in=pages_sign_in,
        pages_tenant=pages_tenant,
        pages_audience=pages_audience,
        pages_allowed=pages_allowed,
        mde_api=mde_api,
        verify_grace_hours=verify_grace,
        allow_test_alert=allow_test_alert,
        test_alert_queue=test_alert_queue,
        test_alert_timeout_minutes=test_alert_timeout,
        dismiss_test_alerts=dismiss_test_alerts,
        management_groups=management_groups,
        app_name=get("WEBSITE_SITE_NAME", ""),
    )


def _mode(raw: str) -> Mode:
    try:
        return Mode(raw.lower())
    except ValueError:
        raise ValueError("must be 'report' or 'enforce'") from None


def _sign_in(raw: str) -> bool:
    """'entra' when the pages take Microsoft Entra tokens instead of function keys."""
    if raw.lower() not in {"", "entra"}:
        raise ValueError("must be empty (function keys) or 'entra' (Entra access tokens)")
    return raw.lower() == "entra"


def _allowed(raw: str) -> frozenset[str]:
    """App role values or group object ids, comma-separated."""
    values = frozenset(value.strip() for value in raw.split(",") if value.strip())
    if any(not APP_ROLE.match(value) for value in values):
        raise ValueError("must be app role values or group object ids, comma-separated")
    return values


def _boolean(raw: str) -> bool:
    value = raw.lower()
    if value in {"true", "1", "yes"}:
        return True
    if value in {"false", "0", "no"}:
        return False
    raise ValueError("must be 'true' or 'false'")


def _plan_change(raw: str) -> bool | frozenset[str]:
    """'true', 'false', or the subscription ids where the plan may be turned on."""
    try:
        return _boolean(raw)
    except ValueError:
        pass
    try:
        return _subscriptions(raw)
    except ValueError:
        raise ValueError(
            "must be 'true', 'false' or a comma-separated list of subscription ids"
        ) from None


def _plan(raw: str) -> str:
    plan = raw.upper()
    if plan not in {"P1", "P2"}:
        raise ValueError("must be 'P1' or 'P2'")
    return plan


def _connection_string_problem(value: str) -> str:
    """What is wrong with a storage connection string, or "". Its shape, from "Configure
    Azure Storage connection strings" (Microsoft Learn): ``key=value`` pairs joined by
    ``;`` (a value may hold ``=``), with UseDevelopmentStorage=true, or an AccountName
    with an AccountKey, or a SharedAccessSignature: endpoints alone carry no credential."""
    pairs = [part for part in value.strip().split(";") if part.strip()]
    keys: dict[str, str] = {}
    for part in pairs:
        key, sep, item = part.partition("=")
        if not sep or not key.strip() or not item.strip():
            return "not a storage connection string (key=value pairs joined by ';')"
        keys[key.strip().lower()] = item.strip()
    if keys.get("usedevelopmentstorage", "").lower() == "true":
        return ""
    if "accountname" in keys and "accountkey" in keys:
        return ""
    if "sharedaccesssignature" in keys:
        return ""
    return (
        "a storage connection string needs AccountName and AccountKey, a "
        "SharedAccessSignature, or UseDevelopmentStorage=true"
    )


def _subscriptions(raw: str) -> frozenset[str]:
    ids = [part.strip() for part in raw.split(",") if part.strip()]
    if not ids:
        raise ValueError("required: a comma-separated list of subscription ids")
    bad = [value for value in ids if not GUID.match(value)]
    if bad:
        raise ValueError(f"not subscription ids (GUIDs): {', '.join(bad)}")
    return frozenset(value.lower() for value in ids)


def _listed_subscriptions(raw: str) -> frozenset[str]:
    """REMEDIATION_SUBSCRIPTIONS: empty is allowed when management groups give the scope."""
    return _subscriptions(raw) if raw.strip(" ,") else frozenset()


# A management group id (ARM naming rules): 1-90 letters, digits, '-', '_', '.', '(', ')',
# not ending in '.'.
MANAGEMENT_GROUP = re.compile(r"^[-\w.()]{0,89}[-\w()]\Z", re.ASCII)


def _management_groups(raw: str) -> frozenset[str]:
    ids = [part.strip() for part in raw.split(",") if part.strip()]
    bad = [value for value in ids if not MANAGEMENT_GROUP.match(value)]
    if bad:
        raise ValueError(f"not management group ids: {', '.join(bad)}")
    return frozenset(value.lower() for value in ids)


def _tag_name(raw: str) -> str:
    if not TAG_NAME.match(raw):
        raise ValueError("must be a tag name of 1-512 characters without < > % & \\ ? /")
    return raw


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return convert


def _poll_seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not 0 <= value <= 60:
        raise ValueError("must be between 0 and 60 seconds")
    return value


def _ncrontab(raw: str) -> str:
    fields = raw.split()
    if len(fields) != 6 or not all(NCRONTAB_FIELD.match(field) for field in fields):
        raise ValueError(
            "must be an NCRONTAB expression of six fields "
            "(second minute hour day month weekday), e.g. '0 0 2 * * *'"
        )
    return " ".join(fields)


def endpoint(raw: str) -> str:
    """An endpoint as the app and the deployment hooks join paths to it: no trailing slash.
    Bicep's environment().resourceManager is "https://management.azure.com/" in the
    public cloud (Bicep docs, "environment" sample output) and has no slash in US Gov
    (ARM's metadata/endpoints): either way, "<endpoint>/subscriptions/..." has one."""
    return raw.strip().rstrip("/")


def _https_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("must be an https:// URL (bearer tokens are refused over http)")
    if parts.query or parts.fragment or parts.path not in {"", "/"}:
        raise ValueError("must be a bare endpoint such as https://management.azure.com")
    return endpoint(raw)


def _optional_https_url(raw: str) -> str:
    return _https_url(raw) if raw else ""


def _optional_topic_url(raw: str) -> str:
    """An Event Grid topic endpoint: https, any path (".../api/events"), no query."""
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(
            "must be the topic's https:// endpoint, e.g. https://<topic>.<region>-1.eventgrid.azure.net/api/events"
        )
    return raw


def _optional_guid(raw: str) -> str:
    if raw and not GUID.match(raw):
        raise ValueError("must be an object id (GUID) or empty")
    return raw.lower()


def _queue_name(raw: str) -> str:
    # The poison queue adds 7 characters and must be a valid name too.
    if not QUEUE_NAME.match(raw) or len(raw) > 56:
        raise ValueError("must be a queue name: 3-56 lowercase letters, digits and single hyphens")
    return raw


def _table_name(raw: str) -> str:
    if not TABLE_NAME.match(raw):
        raise ValueError("must be a table name: 3-63 letters and digits, a letter first")
    return raw
