import dataclasses

import pytest

from remediation.config import Mode, Settings, SettingsError, load
from tests.conftest import function_bindings

SUB_A = "11111111-1111-1111-1111-111111111111"
SUB_B = "22222222-2222-2222-2222-22222222222B"
SUB_C = "33333333-3333-3333-3333-333333333333"
MINIMAL = {"REMEDIATION_SUBSCRIPTIONS": SUB_A, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}


def fields_of(settings):
    return {field.name: getattr(settings, field.name) for field in dataclasses.fields(Settings)}


def problems_with(environ):
    with pytest.raises(SettingsError) as caught:
        load(environ)
    return caught.value.problems


def test_every_default_is_safe_and_written_here():
    assert fields_of(load(MINIMAL)) == {
        "mode": Mode.REPORT,
        "subscriptions": frozenset({SUB_A}),
        "allow_plan_change": False,
        "servers_plan": "P1",
        "enable_integration": True,
        "exclude_tag": "defender-remediation-exclude",
        "max_actions_per_sweep": 500,
        "sweep_schedule": "0 0 2 * * *",
        "arm_endpoint": "https://management.azure.com",
        "principal_id": "",
        "install_queue": "mde-installs",
        "audit_table": "remediationlog",
        "max_reinstalls": 2,
        "posture_ttl_seconds": 300,
        "retry_budget_seconds": 120,
        "lro_poll_seconds": 10.0,
        "install_timeout_seconds": 60,
        "install_cooldown_seconds": 900,
        "event_budget_seconds": 10,
        "recheck_seconds": 120,
        "recheck_minutes": 60,
        "sweep_queue": "sweep-batches",
        "sweep_batch_size": 20,
        "authority_host": "",
        "storage_connection": "UseDevelopmentStorage=true",
        "storage_account": "",
        "audit_retention_days": 400,
        "notify_endpoint": "",
        "notify_key": "",
        "pages_sign_in": False,
        "pages_tenant": "",
        "pages_audience": "",
        "pages_allowed": frozenset(),
        "mde_api": "",  # verification off
        "verify_grace_hours": 24,
        "allow_test_alert": False,  # the test alert runs a command: opt-in
        "test_alert_queue": "mde-test-alerts",
        "test_alert_timeout_minutes": 60,
        "dismiss_test_alerts": False,
        "app_name": "",
        "management_groups": frozenset(),
        "event_queue": "vm-events",
    }


def test_what_the_defaults_imply():
    settings = load(MINIMAL)
    assert settings.enforce is False
    assert settings.poison_queue == "mde-installs-poison"
    assert settings.sweep_poison_queue == "sweep-batches-poison"
    assert settings.disable_instance_discovery is False
    assert settings.storage_suffix == "core.windows.net"
    assert settings.plan_change_allowed(SUB_A) is False


def test_every_setting_is_read():
    settings = load(
        {
            "REMEDIATION_MODE": " Enforce ",
            "REMEDIATION_SUBSCRIPTIONS": f" {SUB_A} , {SUB_B},",
            "REMEDIATION_ALLOW_PLAN_CHANGE": "TRUE",
            "REMEDIATION_SERVERS_PLAN": " p2 ",
            "REMEDIATION_ENABLE_INTEGRATION": "false",
            "REMEDIATION_EXCLUDE_TAG": "no-mde",
            "REMEDIATION_MAX_ACTIONS_PER_SWEEP": "25",
            "REMEDIATION_SWEEP_SCHEDULE": "0  30 1 * * *",
            "REMEDIATION_ARM_ENDPOINT": "https://127.0.0.1:8443/",
            "REMEDIATION_PRINCIPAL_ID": "AAAAAAAA-0000-0000-0000-000000000001",
            "REMEDIATION_INSTALL_QUEUE": "installs",
            "REMEDIATION_EVENT_QUEUE": "events",
            "REMEDIATION_AUDIT_TABLE": "audit2",
            "REMEDIATION_MAX_REINSTALLS": "5",
            "REMEDIATION_POSTURE_TTL_SECONDS": "30",
            "REMEDIATION_RETRY_BUDGET_SECONDS": "45",
            "REMEDIATION_LRO_POLL_SECONDS": "0.5",
            "REMEDIATION_INSTALL_TIMEOUT_SECONDS": "90",
            "REMEDIATION_INSTALL_COOLDOWN_SECONDS": "60",
            "REMEDIATION_EVENT_BUDGET_SECONDS": "20",
            "REMEDIATION_RECHECK_SECONDS": "30",
            "REMEDIATION_RECHECK_MINUTES": "15",
            "REMEDIATION_SWEEP_QUEUE": "batches",
            "REMEDIATION_SWEEP_BATCH_SIZE": "7",
            "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us/",
            "AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=st;AccountKey=a2V5",
            "AzureWebJobsStorage__accountName": "st",
            "REMEDIATION_AUDIT_RETENTION_DAYS": "30",
            "REMEDIATION_NOTIFY_TOPIC_ENDPOINT": "https://t.westeurope-1.eventgrid.azure.net/api/events",
            "REMEDIATION_NOTIFY_TOPIC_KEY": " key== ",
            "REMEDIATION_PAGES_SIGN_IN": "entra",
            "REMEDIATION_PAGES_TENANT": "72F988BF-86F1-41AF-91AB-2D7CD011DB47",
            "REMEDIATION_PAGES_AUDIENCE": "c0ffee00-0000-4000-8000-000000000001",
            "REMEDIATION_PAGES_ALLOWED": " Remediation.Read, 9b4f1a7e-0000-4000-8000-0000000000aa ,",
            "REMEDIATION_MDE_API": "https://api-eu.securitycenter.microsoft.com/",
            "REMEDIATION_VERIFY_GRACE_HOURS": "6",
            "REMEDIATION_ALLOW_TEST_ALERT": "yes",
            "REMEDIATION_TEST_ALERT_QUEUE": "probes",
            "REMEDIATION_TEST_ALERT_TIMEOUT_MINUTES": "30",
            "REMEDIATION_DISMISS_TEST_ALERTS": "1",
            "WEBSITE_SITE_NAME": "func-remediate",
            "REMEDIATION_MANAGEMENT_GROUPS": " Contoso-Root , platform(1) ,",
        }
    )
    assert fields_of(settings) == {
        "mode": Mode.ENFORCE,
        "subscriptions": frozenset({SUB_A, "22222222-2222-2222-2222-22222222222b"}),
        "allow_plan_change": True,
        "servers_plan": "P2",
        "enable_integration": False,
        "exclude_tag": "no-mde",
        "max_actions_per_sweep": 25,
        "sweep_schedule": "0 30 1 * * *",
        "arm_endpoint": "https://127.0.0.1:8443",
        "principal_id": "aaaaaaaa-0000-0000-0000-000000000001",
        "install_queue": "installs",
        "audit_table": "audit2",
        "max_reinstalls": 5,
        "posture_ttl_seconds": 30,
        "retry_budget_seconds": 45,
        "lro_poll_seconds": 0.5,
        "install_timeout_seconds": 90,
        "install_cooldown_seconds": 60,
        "event_budget_seconds": 20,
        "recheck_seconds": 30,
        "recheck_minutes": 15,
        "sweep_queue": "batches",
        "sweep_batch_size": 7,
        "authority_host": "https://login.microsoftonline.us",
        "storage_connection": "DefaultEndpointsProtocol=https;AccountName=st;AccountKey=a2V5",
        "storage_account": "st",
        "audit_retention_days": 30,
        "notify_endpoint": "https://t.westeurope-1.eventgrid.azure.net/api/events",
        "notify_key": "key==",
        "pages_sign_in": True,
        "pages_tenant": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "pages_audience": "c0ffee00-0000-4000-8000-000000000001",
        "pages_allowed": frozenset({"Remediation.Read", "9b4f1a7e-0000-4000-8000-0000000000aa"}),
        "mde_api": "https://api-eu.securitycenter.microsoft.com",
        "verify_grace_hours": 6,
        "allow_test_alert": True,
        "test_alert_queue": "probes",
        "test_alert_timeout_minutes": 30,
        "dismiss_test_alerts": True,
        "app_name": "func-remediate",
        "management_groups": frozenset({"contoso-root", "platform(1)"}),
        "event_queue": "events",
    }
    assert settings.enforce is True
    assert settings.poison_queue == "installs-poison"
    assert settings.sweep_poison_queue == "batches-poison"


def test_secrets_stay_out_of_the_settings_repr():
    settings = load(MINIMAL | {"REMEDIATION_NOTIFY_TOPIC_KEY": "s3cret", **_topic()})
    assert "UseDevelopmentStorage" not in repr(settings)
    assert "s3cret" not in repr(settings)


def _topic():
    return {
        "REMEDIATION_NOTIFY_TOPIC_ENDPOINT": "https://t.westeurope-1.eventgrid.azure.net/api/events"
    }


# (setting, Settings field, lowest allowed, highest allowed)
BOUNDED = [
    ("REMEDIATION_MAX_ACTIONS_PER_SWEEP", "max_actions_per_sweep", 1, 100_000),
    ("REMEDIATION_MAX_REINSTALLS", "max_reinstalls", 0, 10),
    ("REMEDIATION_POSTURE_TTL_SECONDS", "posture_ttl_seconds", 0, 86_400),
    ("REMEDIATION_RETRY_BUDGET_SECONDS", "retry_budget_seconds", 1, 3_600),
    ("REMEDIATION_INSTALL_TIMEOUT_SECONDS", "install_timeout_seconds", 1, 600),
    ("REMEDIATION_RECHECK_SECONDS", "recheck_seconds", 1, 3_600),
    ("REMEDIATION_RECHECK_MINUTES", "recheck_minutes", 1, 1_440),
    ("REMEDIATION_EVENT_BUDGET_SECONDS", "event_budget_seconds", 1, 25),
    ("REMEDIATION_INSTALL_COOLDOWN_SECONDS", "install_cooldown_seconds", 0, 86_400),
    ("REMEDIATION_SWEEP_BATCH_SIZE", "sweep_batch_size", 1, 1_000),
    ("REMEDIATION_AUDIT_RETENTION_DAYS", "audit_retention_days", 1, 3_650),
]


@pytest.mark.parametrize(("name", "field", "low", "high"), BOUNDED, ids=[r[0] for r in BOUNDED])
def test_a_bounded_setting_takes_its_bounds_and_refuses_one_past_them(name, field, low, high):
    assert getattr(load(MINIMAL | {name: str(low)}), field) == low
    assert getattr(load(MINIMAL | {name: str(high)}), field) == high
    assert problems_with(MINIMAL | {name: str(low - 1)}) == [
        f"{name}='{low - 1}': must be between {low} and {high}"
    ]
    assert problems_with(MINIMAL | {name: str(high + 1)}) == [
        f"{name}='{high + 1}': must be between {low} and {high}"
    ]


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("0.5", 0.5), ("60", 60.0)])
def test_the_poll_interval_takes_zero_to_sixty_seconds(value, seconds):
    assert load(MINIMAL | {"REMEDIATION_LRO_POLL_SECONDS": value}).lro_poll_seconds == seconds


@pytest.mark.parametrize("value", ["-0.5", "60.5"])
def test_the_poll_interval_refuses_what_is_outside(value):
    assert problems_with(MINIMAL | {"REMEDIATION_LRO_POLL_SECONDS": value}) == [
        f"REMEDIATION_LRO_POLL_SECONDS='{value}': must be between 0 and 60 seconds"
    ]


# (setting, a bad value, the problem reported, word for word)
# fmt: off
BAD_VALUES = [
    ("REMEDIATION_MODE", "yolo", "REMEDIATION_MODE='yolo': must be 'report' or 'enforce'"),
    ("REMEDIATION_SUBSCRIPTIONS", "", "REMEDIATION_SUBSCRIPTIONS='': required: a comma-separated list of subscription ids (or set REMEDIATION_MANAGEMENT_GROUPS)"),
    ("REMEDIATION_SUBSCRIPTIONS", " , ", "REMEDIATION_SUBSCRIPTIONS=',': required: a comma-separated list of subscription ids (or set REMEDIATION_MANAGEMENT_GROUPS)"),
    ("REMEDIATION_SUBSCRIPTIONS", f"a,{SUB_A},b", f"REMEDIATION_SUBSCRIPTIONS='a,{SUB_A},b': not subscription ids (GUIDs): a, b"),
    ("REMEDIATION_SUBSCRIPTIONS", f"{SUB_A}0", f"REMEDIATION_SUBSCRIPTIONS='{SUB_A}0': not subscription ids (GUIDs): {SUB_A}0"),
    ("REMEDIATION_SUBSCRIPTIONS", f"{SUB_A}-junk", f"REMEDIATION_SUBSCRIPTIONS='{SUB_A}-junk': not subscription ids (GUIDs): {SUB_A}-junk"),
    ("REMEDIATION_SUBSCRIPTIONS", f"x{SUB_A}", f"REMEDIATION_SUBSCRIPTIONS='x{SUB_A}': not subscription ids (GUIDs): x{SUB_A}"),
    ("REMEDIATION_SUBSCRIPTIONS", "X", "REMEDIATION_SUBSCRIPTIONS='X': not subscription ids (GUIDs): X"),
    ("REMEDIATION_MANAGEMENT_GROUPS", "ok,bad group,x.", "REMEDIATION_MANAGEMENT_GROUPS='ok,bad group,x.': not management group ids: bad group, x."),
    ("REMEDIATION_MANAGEMENT_GROUPS", "a" * 91, f"REMEDIATION_MANAGEMENT_GROUPS='{'a' * 91}': not management group ids: {'a' * 91}"),
    ("REMEDIATION_ALLOW_PLAN_CHANGE", "maybe", "REMEDIATION_ALLOW_PLAN_CHANGE='maybe': must be 'true', 'false' or a comma-separated list of subscription ids"),
    ("REMEDIATION_SERVERS_PLAN", "P3", "REMEDIATION_SERVERS_PLAN='P3': must be 'P1' or 'P2'"),
    ("REMEDIATION_ENABLE_INTEGRATION", "on", "REMEDIATION_ENABLE_INTEGRATION='on': must be 'true' or 'false'"),
    ("REMEDIATION_EXCLUDE_TAG", "a/b", "REMEDIATION_EXCLUDE_TAG='a/b': must be a tag name of 1-512 characters without < > % & \\ ? /"),
    ("REMEDIATION_MAX_ACTIONS_PER_SWEEP", "1.5", "REMEDIATION_MAX_ACTIONS_PER_SWEEP='1.5': must be a whole number"),
    ("REMEDIATION_SWEEP_SCHEDULE", "0 2 * * *", "REMEDIATION_SWEEP_SCHEDULE='0 2 * * *': must be an NCRONTAB expression of six fields (second minute hour day month weekday), e.g. '0 0 2 * * *'"),
    ("REMEDIATION_SWEEP_SCHEDULE", "0 0 2 * * * 2027", "REMEDIATION_SWEEP_SCHEDULE='0 0 2 * * * 2027': must be an NCRONTAB expression of six fields (second minute hour day month weekday), e.g. '0 0 2 * * *'"),
    ("REMEDIATION_SWEEP_SCHEDULE", "0 0 2 * * ?", "REMEDIATION_SWEEP_SCHEDULE='0 0 2 * * ?': must be an NCRONTAB expression of six fields (second minute hour day month weekday), e.g. '0 0 2 * * *'"),
    ("REMEDIATION_ARM_ENDPOINT", "http://management.azure.com", "REMEDIATION_ARM_ENDPOINT='http://management.azure.com': must be an https:// URL (bearer tokens are refused over http)"),
    ("REMEDIATION_ARM_ENDPOINT", "https://", "REMEDIATION_ARM_ENDPOINT='https://': must be an https:// URL (bearer tokens are refused over http)"),
    ("REMEDIATION_ARM_ENDPOINT", "https://management.azure.com/subscriptions", "REMEDIATION_ARM_ENDPOINT='https://management.azure.com/subscriptions': must be a bare endpoint such as https://management.azure.com"),
    ("REMEDIATION_ARM_ENDPOINT", "https://management.azure.com?x=1", "REMEDIATION_ARM_ENDPOINT='https://management.azure.com?x=1': must be a bare endpoint such as https://management.azure.com"),
    ("REMEDIATION_ARM_ENDPOINT", "https://management.azure.com#x", "REMEDIATION_ARM_ENDPOINT='https://management.azure.com#x': must be a bare endpoint such as https://management.azure.com"),
    ("REMEDIATION_PRINCIPAL_ID", "me", "REMEDIATION_PRINCIPAL_ID='me': must be an object id (GUID) or empty"),
    ("REMEDIATION_INSTALL_QUEUE", "Bad_Queue", "REMEDIATION_INSTALL_QUEUE='Bad_Queue': must be a queue name: 3-56 lowercase letters, digits and single hyphens"),
    ("REMEDIATION_INSTALL_QUEUE", "a--b", "REMEDIATION_INSTALL_QUEUE='a--b': must be a queue name: 3-56 lowercase letters, digits and single hyphens"),
    ("REMEDIATION_INSTALL_QUEUE", "q" * 57, f"REMEDIATION_INSTALL_QUEUE='{'q' * 57}': must be a queue name: 3-56 lowercase letters, digits and single hyphens"),
    ("REMEDIATION_SWEEP_QUEUE", "ab", "REMEDIATION_SWEEP_QUEUE='ab': must be a queue name: 3-56 lowercase letters, digits and single hyphens"),
    ("REMEDIATION_AUDIT_TABLE", "1table", "REMEDIATION_AUDIT_TABLE='1table': must be a table name: 3-63 letters and digits, a letter first"),
    ("REMEDIATION_LRO_POLL_SECONDS", "soon", "REMEDIATION_LRO_POLL_SECONDS='soon': must be a number of seconds"),
    ("AZURE_AUTHORITY_HOST", "ftp://login", "AZURE_AUTHORITY_HOST='ftp://login': must be an https:// URL (bearer tokens are refused over http)"),
    ("REMEDIATION_NOTIFY_TOPIC_ENDPOINT", "http://t.westeurope-1.eventgrid.azure.net/api/events", "REMEDIATION_NOTIFY_TOPIC_ENDPOINT='http://t.westeurope-1.eventgrid.azure.net/api/events': must be the topic's https:// endpoint, e.g. https://<topic>.<region>-1.eventgrid.azure.net/api/events"),
    ("REMEDIATION_NOTIFY_TOPIC_ENDPOINT", "https:///api/events", "REMEDIATION_NOTIFY_TOPIC_ENDPOINT='https:///api/events': must be the topic's https:// endpoint, e.g. https://<topic>.<region>-1.eventgrid.azure.net/api/events"),
    ("REMEDIATION_NOTIFY_TOPIC_ENDPOINT", "https://t.eventgrid.azure.net/api/events?key=1", "REMEDIATION_NOTIFY_TOPIC_ENDPOINT='https://t.eventgrid.azure.net/api/events?key=1': must be the topic's https:// endpoint, e.g. https://<topic>.<region>-1.eventgrid.azure.net/api/events"),
    ("REMEDIATION_NOTIFY_TOPIC_ENDPOINT", "https://t.eventgrid.azure.net/api/events#x", "REMEDIATION_NOTIFY_TOPIC_ENDPOINT='https://t.eventgrid.azure.net/api/events#x': must be the topic's https:// endpoint, e.g. https://<topic>.<region>-1.eventgrid.azure.net/api/events"),
    ("REMEDIATION_NOTIFY_TOPIC_KEY", "key==", "REMEDIATION_NOTIFY_TOPIC_KEY: set without REMEDIATION_NOTIFY_TOPIC_ENDPOINT"),
    ("REMEDIATION_PAGES_SIGN_IN", "yes", "REMEDIATION_PAGES_SIGN_IN='yes': must be empty (function keys) or 'entra' (Entra access tokens)"),
    ("REMEDIATION_PAGES_SIGN_IN", "aad", "REMEDIATION_PAGES_SIGN_IN='aad': must be empty (function keys) or 'entra' (Entra access tokens)"),
    ("REMEDIATION_PAGES_TENANT", "contoso.onmicrosoft.com", "REMEDIATION_PAGES_TENANT='contoso.onmicrosoft.com': must be an object id (GUID) or empty"),
    ("REMEDIATION_PAGES_AUDIENCE", "api://pages", "REMEDIATION_PAGES_AUDIENCE='api://pages': must be an object id (GUID) or empty"),
    ("REMEDIATION_PAGES_ALLOWED", "Report Readers", "REMEDIATION_PAGES_ALLOWED='Report Readers': must be app role values or group object ids, comma-separated"),
    ("REMEDIATION_MDE_API", "http://api.securitycenter.microsoft.com", "REMEDIATION_MDE_API='http://api.securitycenter.microsoft.com': must be an https:// URL (bearer tokens are refused over http)"),
    ("REMEDIATION_MDE_API", "https://api.securitycenter.microsoft.com/api/machines", "REMEDIATION_MDE_API='https://api.securitycenter.microsoft.com/api/machines': must be a bare endpoint such as https://management.azure.com"),
    ("REMEDIATION_VERIFY_GRACE_HOURS", "0", "REMEDIATION_VERIFY_GRACE_HOURS='0': must be between 1 and 720"),
    ("REMEDIATION_ALLOW_TEST_ALERT", "sure", "REMEDIATION_ALLOW_TEST_ALERT='sure': must be 'true' or 'false'"),
    ("REMEDIATION_TEST_ALERT_QUEUE", "Tests", "REMEDIATION_TEST_ALERT_QUEUE='Tests': must be a queue name: 3-56 lowercase letters, digits and single hyphens"),
    ("REMEDIATION_TEST_ALERT_TIMEOUT_MINUTES", "4", "REMEDIATION_TEST_ALERT_TIMEOUT_MINUTES='4': must be between 5 and 1440"),
    ("REMEDIATION_DISMISS_TEST_ALERTS", "y", "REMEDIATION_DISMISS_TEST_ALERTS='y': must be 'true' or 'false'"),
]
# fmt: on


@pytest.mark.parametrize(
    ("name", "value", "problem"), BAD_VALUES, ids=[f"{r[0]}={r[1][:40]}" for r in BAD_VALUES]
)
def test_a_bad_value_is_reported_naming_its_setting(name, value, problem):
    assert problems_with(MINIMAL | {name: value}) == [problem]


def test_every_problem_is_reported_at_once_one_line_each():
    with pytest.raises(SettingsError) as caught:
        load({"REMEDIATION_MODE": "yolo", "REMEDIATION_SUBSCRIPTIONS": "not-a-guid"})
    assert str(caught.value) == (
        "invalid settings:\n"
        "  - REMEDIATION_MODE='yolo': must be 'report' or 'enforce'\n"
        "  - REMEDIATION_SUBSCRIPTIONS='not-a-guid': not subscription ids (GUIDs): not-a-guid\n"
        "  - AzureWebJobsStorage: required (a connection string, or "
        "AzureWebJobsStorage__accountName for identity-based access)"
    )


def test_subscriptions_are_required_even_when_absent():
    assert problems_with({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}) == [
        "REMEDIATION_SUBSCRIPTIONS='': required: a comma-separated list of subscription ids (or set REMEDIATION_MANAGEMENT_GROUPS)"
    ]


@pytest.mark.parametrize(
    ("value", "enabled"),
    [
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("YES", True),
        ("1", True),
        ("false", False),
        ("False", False),
        ("no", False),
        ("NO", False),
        ("0", False),
    ],
)
def test_booleans_read_true_yes_1_and_false_no_0_in_any_case(value, enabled):
    assert load(MINIMAL | {"REMEDIATION_ENABLE_INTEGRATION": value}).enable_integration is enabled
    assert load(MINIMAL | {"REMEDIATION_ALLOW_PLAN_CHANGE": value}).allow_plan_change is enabled


def test_plan_change_can_name_the_subscriptions_in_scope_in_any_case():
    settings = load(
        MINIMAL
        | {
            "REMEDIATION_SUBSCRIPTIONS": f"{SUB_A},{SUB_B}",
            "REMEDIATION_ALLOW_PLAN_CHANGE": SUB_B,
        }
    )
    assert settings.allow_plan_change == frozenset({"22222222-2222-2222-2222-22222222222b"})
    assert settings.plan_change_allowed(SUB_B) is True
    assert settings.plan_change_allowed(SUB_B.lower()) is True
    assert settings.plan_change_allowed(SUB_A) is False


def test_plan_change_may_name_every_subscription_in_scope():
    settings = load(MINIMAL | {"REMEDIATION_ALLOW_PLAN_CHANGE": SUB_A})
    assert settings.allow_plan_change == frozenset({SUB_A})


def test_plan_change_cannot_name_subscriptions_out_of_scope():
    assert problems_with(
        MINIMAL | {"REMEDIATION_ALLOW_PLAN_CHANGE": f"{SUB_C},{SUB_B}, {SUB_A}"}
    ) == [
        "REMEDIATION_ALLOW_PLAN_CHANGE: names subscriptions outside REMEDIATION_SUBSCRIPTIONS: "
        f"22222222-2222-2222-2222-22222222222b, {SUB_C}"
    ]


def test_management_groups_alone_give_the_scope_and_plan_change_may_name_any_subscription():
    settings = load(
        {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "REMEDIATION_MANAGEMENT_GROUPS": "Contoso",
            "REMEDIATION_ALLOW_PLAN_CHANGE": SUB_C,  # under the group, maybe: known when resolved
        }
    )
    assert (settings.subscriptions, settings.management_groups) == (frozenset(), {"contoso"})
    assert settings.allow_plan_change == frozenset({SUB_C})
    assert problems_with(
        {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "REMEDIATION_MANAGEMENT_GROUPS": " , ",
        }
    ) == [
        "REMEDIATION_SUBSCRIPTIONS='': required: a comma-separated list of subscription ids "
        "(or set REMEDIATION_MANAGEMENT_GROUPS)"
    ]


def test_a_bad_setting_is_reported_once_not_again_through_the_settings_that_depend_on_it():
    assert problems_with(
        MINIMAL | {"REMEDIATION_SUBSCRIPTIONS": "nope", "REMEDIATION_ALLOW_PLAN_CHANGE": SUB_A}
    ) == ["REMEDIATION_SUBSCRIPTIONS='nope': not subscription ids (GUIDs): nope"]
    assert problems_with(
        MINIMAL
        | {
            "REMEDIATION_NOTIFY_TOPIC_ENDPOINT": "http://topic.example/api/events",
            "REMEDIATION_NOTIFY_TOPIC_KEY": "key==",
        }
    ) == [
        "REMEDIATION_NOTIFY_TOPIC_ENDPOINT='http://topic.example/api/events': must be the "
        "topic's https:// endpoint, e.g. https://<topic>.<region>-1.eventgrid.azure.net/api/events"
    ]


def test_an_endpoint_keeps_its_host_as_written_and_loses_only_its_trailing_slash():
    settings = load(MINIMAL | {"REMEDIATION_ARM_ENDPOINT": "https://ARM.CONTOSO.BOX/"})
    assert settings.arm_endpoint == "https://ARM.CONTOSO.BOX"


def test_a_queue_name_may_be_56_characters_its_poison_queue_63():
    settings = load(MINIMAL | {"REMEDIATION_INSTALL_QUEUE": "q" * 56})
    assert settings.install_queue == "q" * 56
    assert settings.poison_queue == "q" * 56 + "-poison"


def test_a_notify_key_with_its_endpoint_is_kept():
    settings = load(MINIMAL | {"REMEDIATION_NOTIFY_TOPIC_KEY": "key==", **_topic()})
    assert (settings.notify_endpoint, settings.notify_key) == (
        "https://t.westeurope-1.eventgrid.azure.net/api/events",
        "key==",
    )


def test_identity_based_storage_is_enough():
    settings = load(
        {"REMEDIATION_SUBSCRIPTIONS": SUB_A, "AzureWebJobsStorage__accountName": "stremediate"}
    )
    assert settings.storage_account == "stremediate"
    assert settings.storage_connection == ""


# (ARM endpoint, the storage suffix of its cloud)
CLOUDS = [
    ("https://management.azure.com", "core.windows.net"),
    ("https://management.usgovcloudapi.net", "core.usgovcloudapi.net"),
    ("https://management.chinacloudapi.cn", "core.chinacloudapi.cn"),
]


@pytest.mark.parametrize(("arm", "suffix"), CLOUDS)
def test_identity_based_storage_takes_the_storage_suffix_of_the_arm_cloud(arm, suffix):
    settings = load(
        {
            "REMEDIATION_SUBSCRIPTIONS": SUB_A,
            "REMEDIATION_ARM_ENDPOINT": arm,
            "AzureWebJobsStorage__accountName": "stremediate",
        }
    )
    assert settings.storage_suffix == suffix


def test_another_cloud_has_no_known_storage_suffix():
    settings = load(MINIMAL | {"REMEDIATION_ARM_ENDPOINT": "https://127.0.0.1:8443"})
    assert settings.storage_suffix == ""


def test_identity_based_storage_in_an_unknown_cloud_needs_a_connection_string():
    environ = {
        "REMEDIATION_SUBSCRIPTIONS": SUB_A,
        "REMEDIATION_ARM_ENDPOINT": "https://127.0.0.1:8443",
        "AzureWebJobsStorage__accountName": "stremediate",
    }
    assert problems_with(environ) == [
        "AzureWebJobsStorage__accountName: the storage endpoint of the cloud of "
        "REMEDIATION_ARM_ENDPOINT (127.0.0.1) is not known: use an AzureWebJobsStorage "
        "connection string"
    ]
    with_connection = load(environ | {"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert with_connection.storage_account == "stremediate"


def test_a_bad_arm_endpoint_is_the_only_problem_identity_storage_gets_from_it():
    assert problems_with(
        {
            "REMEDIATION_SUBSCRIPTIONS": SUB_A,
            "REMEDIATION_ARM_ENDPOINT": "http://management.azure.com",
            "AzureWebJobsStorage__accountName": "stremediate",
        }
    ) == [
        "REMEDIATION_ARM_ENDPOINT='http://management.azure.com': must be an https:// URL "
        "(bearer tokens are refused over http)",
    ]


@pytest.mark.parametrize(
    ("authority", "disabled"),
    [
        ("", False),
        ("https://login.microsoftonline.com", False),
        ("https://login.microsoftonline.us/", False),
        ("https://login.chinacloudapi.cn", False),
        ("https://login.microsoftonline.de", False),
        ("https://127.0.0.1:8443", True),
    ],
)
def test_instance_discovery_is_disabled_only_for_a_private_authority(authority, disabled):
    settings = load(MINIMAL | {"AZURE_AUTHORITY_HOST": authority})
    assert settings.disable_instance_discovery is disabled


def test_settings_are_frozen():
    settings = load(MINIMAL)
    with pytest.raises(AttributeError):
        settings.mode = Mode.ENFORCE  # type: ignore[misc]


def test_the_poison_queues_the_app_reads_are_the_ones_settings_name():
    settings = load(
        MINIMAL | {"REMEDIATION_INSTALL_QUEUE": "installs", "REMEDIATION_SWEEP_QUEUE": "batches"}
    )
    bindings = function_bindings()
    install = bindings["install_poison"][0]["queueName"]
    sweep = bindings["sweep_batch_poison"][0]["queueName"]
    assert (install, sweep) == (
        "%REMEDIATION_INSTALL_QUEUE%-poison",
        "%REMEDIATION_SWEEP_QUEUE%-poison",
    )
    # The host puts each setting's value in place of %NAME%.
    assert install.replace("%REMEDIATION_INSTALL_QUEUE%", "installs") == settings.poison_queue
    assert sweep.replace("%REMEDIATION_SWEEP_QUEUE%", "batches") == settings.sweep_poison_queue
    assert (settings.poison_queue, settings.sweep_poison_queue) == (
        "installs-poison",
        "batches-poison",
    )


REMEDIATION_NAMES = (
    "MODE",
    "EVENT_QUEUE",
    "SUBSCRIPTIONS",
    "MANAGEMENT_GROUPS",
    "ALLOW_PLAN_CHANGE",
    "SERVERS_PLAN",
    "ENABLE_INTEGRATION",
    "EXCLUDE_TAG",
    "MAX_ACTIONS_PER_SWEEP",
    "SWEEP_SCHEDULE",
    "ARM_ENDPOINT",
    "PRINCIPAL_ID",
    "INSTALL_QUEUE",
    "AUDIT_TABLE",
    "MAX_REINSTALLS",
    "POSTURE_TTL_SECONDS",
    "RETRY_BUDGET_SECONDS",
    "LRO_POLL_SECONDS",
    "INSTALL_TIMEOUT_SECONDS",
    "RECHECK_SECONDS",
    "RECHECK_MINUTES",
    "EVENT_BUDGET_SECONDS",
    "INSTALL_COOLDOWN_SECONDS",
    "SWEEP_QUEUE",
    "SWEEP_BATCH_SIZE",
    "AUDIT_RETENTION_DAYS",
    "NOTIFY_TOPIC_ENDPOINT",
    "NOTIFY_TOPIC_KEY",
    "PAGES_SIGN_IN",
    "PAGES_TENANT",
    "PAGES_AUDIENCE",
    "PAGES_ALLOWED",
    "MDE_API",
    "VERIFY_GRACE_HOURS",
    "ALLOW_TEST_ALERT",
    "TEST_ALERT_QUEUE",
    "TEST_ALERT_TIMEOUT_MINUTES",
    "DISMISS_TEST_ALERTS",
)


class Recording(dict):
    """A mapping that remembers every name load() asks for."""

    def __init__(self, values):
        super().__init__(values)
        self.asked = set()

    def get(self, name, default=None):
        self.asked.add(name)
        return super().get(name, default)


def test_the_example_settings_and_the_readme_name_every_setting():
    import json
    from pathlib import Path

    root = Path(__file__).parent.parent
    environ = Recording(MINIMAL)
    load(environ)
    assert environ.asked == {
        "AZURE_AUTHORITY_HOST",
        "AzureWebJobsStorage",
        "AzureWebJobsStorage__accountName",
        "WEBSITE_SITE_NAME",
        *(f"REMEDIATION_{name}" for name in REMEDIATION_NAMES),
    }
    names = {f"REMEDIATION_{name}" for name in REMEDIATION_NAMES}
    example = json.loads((root / "local.settings.example.json").read_text())["Values"]
    readme = (root / "README.md").read_text()
    assert names <= set(example), names - set(example)
    assert all(f"`{name}`" in readme for name in names), [
        n for n in names if f"`{n}`" not in readme
    ]
    assert example["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert example["REMEDIATION_MODE"] == "report"
    assert example["REMEDIATION_ALLOW_PLAN_CHANGE"] == "false"
    assert load(example).mode is Mode.REPORT  # the example itself is valid


PAGES = {
    "REMEDIATION_PAGES_TENANT": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "REMEDIATION_PAGES_AUDIENCE": "c0ffee00-0000-4000-8000-000000000001",
    "REMEDIATION_PAGES_ALLOWED": "Remediation.Read",
}


@pytest.mark.parametrize(("value", "on"), [("", False), ("entra", True), (" Entra ", True)])
def test_pages_sign_in_is_off_unless_entra(value, on):
    assert load(MINIMAL | PAGES | {"REMEDIATION_PAGES_SIGN_IN": value}).pages_sign_in is on
    assert load(MINIMAL).pages_sign_in is False


def test_sign_in_without_its_tenant_audience_and_allowed_names_each_missing_setting():
    assert problems_with(MINIMAL | {"REMEDIATION_PAGES_SIGN_IN": "entra"}) == [
        "REMEDIATION_PAGES_TENANT: required with REMEDIATION_PAGES_SIGN_IN=entra",
        "REMEDIATION_PAGES_AUDIENCE: required with REMEDIATION_PAGES_SIGN_IN=entra",
        "REMEDIATION_PAGES_ALLOWED: required with REMEDIATION_PAGES_SIGN_IN=entra",
    ]
    only_commas = MINIMAL | PAGES | {"REMEDIATION_PAGES_SIGN_IN": "entra"}
    assert problems_with(only_commas | {"REMEDIATION_PAGES_ALLOWED": " , "}) == [
        "REMEDIATION_PAGES_ALLOWED: required with REMEDIATION_PAGES_SIGN_IN=entra"
    ]
    # Without sign-in, the three are optional.
    assert load(MINIMAL | PAGES).pages_sign_in is False


def test_a_list_of_only_separators_and_blanks_is_the_empty_list_it_is():
    assert problems_with(MINIMAL | {"REMEDIATION_SUBSCRIPTIONS": ",\t,"}) == [
        "REMEDIATION_SUBSCRIPTIONS=',\\t,': required: a comma-separated list of subscription ids"
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("garbage", "not a storage connection string (key=value pairs joined by ';')"),
        (
            "=x;AccountName=st;AccountKey=a2V5",
            "not a storage connection string (key=value pairs joined by ';')",
        ),
        (
            "QueueEndpoint=https://st.queue.core.windows.net;TableEndpoint=https://st.table.core.windows.net",
            "a storage connection string needs AccountName and AccountKey, a "
            "SharedAccessSignature, or UseDevelopmentStorage=true",
        ),
        (
            "AccountName=st;AccountKey=",
            "not a storage connection string (key=value pairs joined by ';')",
        ),
        (
            "DefaultEndpointsProtocol=https;AccountName=st",
            "a storage connection string needs AccountName and AccountKey, a "
            "SharedAccessSignature, or UseDevelopmentStorage=true",
        ),
    ],
)
def test_a_malformed_storage_connection_string_is_named_and_never_shown(value, problem):
    assert problems_with(MINIMAL | {"AzureWebJobsStorage": value}) == [
        f"AzureWebJobsStorage: {problem} (the value is not shown: it may hold a key)"
    ]


@pytest.mark.parametrize(
    "value",
    [
        "UseDevelopmentStorage=true",
        "DefaultEndpointsProtocol=https;AccountName=st;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        "QueueEndpoint=https://st.queue.core.windows.net;TableEndpoint=https://st.table.core.windows.net;SharedAccessSignature=sv=1",
        "TableEndpoint=https://st.table.core.windows.net;SharedAccessSignature=sv=2020-08-04&sig=ab%2Bc=",
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;",
    ],
)
def test_the_documented_connection_string_shapes_pass(value):
    assert load(MINIMAL | {"AzureWebJobsStorage": value}).storage_connection == value


@pytest.mark.parametrize(
    ("given", "joined"),
    [
        # Bicep's environment().resourceManager: the public cloud's ends in "/" (Bicep docs,
        # "environment" sample output); US Gov's has none (ARM's metadata/endpoints).
        ("https://management.azure.com/", "https://management.azure.com"),
        ("https://management.usgovcloudapi.net", "https://management.usgovcloudapi.net"),
        (" https://management.chinacloudapi.cn/ ", "https://management.chinacloudapi.cn"),
    ],
)
def test_an_endpoint_joins_paths_with_one_slash_whatever_bicep_gave(given, joined):
    from remediation.config import endpoint

    assert endpoint(given) == joined
    assert f"{endpoint(given)}/subscriptions/x".count("//") == 1  # the scheme's only
    assert load(MINIMAL | {"REMEDIATION_ARM_ENDPOINT": given.strip()}).arm_endpoint == joined
