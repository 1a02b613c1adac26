import pytest

from remediation.config import Mode, SettingsError, load

SUB_A = "11111111-1111-1111-1111-111111111111"
SUB_B = "22222222-2222-2222-2222-22222222222B"
MINIMAL = {"REMEDIATION_SUBSCRIPTIONS": SUB_A, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}


def test_defaults_are_safe():
    settings = load(MINIMAL)
    assert settings.mode is Mode.REPORT
    assert not settings.enforce
    assert settings.allow_plan_change is False
    assert settings.servers_plan == "P1"
    assert settings.enable_integration is True
    assert settings.exclude_tag == "defender-remediation-exclude"
    assert settings.max_actions_per_sweep == 500
    assert settings.sweep_schedule == "0 0 2 * * *"
    assert settings.arm_endpoint == "https://management.azure.com"
    assert settings.install_queue == "mde-installs"
    assert settings.poison_queue == "mde-installs-poison"
    assert settings.audit_table == "remediationlog"
    assert settings.principal_id == ""


def test_every_setting_is_read():
    settings = load(
        MINIMAL
        | {
            "REMEDIATION_MODE": "Enforce",
            "REMEDIATION_SUBSCRIPTIONS": f" {SUB_A} , {SUB_B},",
            "REMEDIATION_ALLOW_PLAN_CHANGE": "TRUE",
            "REMEDIATION_SERVERS_PLAN": "p2",
            "REMEDIATION_ENABLE_INTEGRATION": "false",
            "REMEDIATION_EXCLUDE_TAG": "no-mde",
            "REMEDIATION_MAX_ACTIONS_PER_SWEEP": "25",
            "REMEDIATION_SWEEP_SCHEDULE": "0  30 1 * * *",
            "REMEDIATION_ARM_ENDPOINT": "https://127.0.0.1:8443/",
            "REMEDIATION_PRINCIPAL_ID": "AAAAAAAA-0000-0000-0000-000000000001",
            "REMEDIATION_INSTALL_QUEUE": "installs",
            "REMEDIATION_AUDIT_TABLE": "audit2",
        }
    )
    assert settings.enforce
    assert settings.subscriptions == {SUB_A, SUB_B.lower()}
    assert settings.in_scope(SUB_B)
    assert settings.allow_plan_change
    assert settings.servers_plan == "P2"
    assert not settings.enable_integration
    assert settings.exclude_tag == "no-mde"
    assert settings.max_actions_per_sweep == 25
    assert settings.sweep_schedule == "0 30 1 * * *"
    assert settings.arm_endpoint == "https://127.0.0.1:8443"
    assert settings.principal_id == "aaaaaaaa-0000-0000-0000-000000000001"
    assert settings.poison_queue == "installs-poison"
    assert settings.audit_table == "audit2"


def test_every_problem_is_reported_at_once_naming_each_setting():
    with pytest.raises(SettingsError) as caught:
        load(
            {
                "REMEDIATION_MODE": "yolo",
                "REMEDIATION_SUBSCRIPTIONS": "not-a-guid",
                "REMEDIATION_ALLOW_PLAN_CHANGE": "maybe",
                "REMEDIATION_SERVERS_PLAN": "P3",
                "REMEDIATION_MAX_ACTIONS_PER_SWEEP": "-1",
                "REMEDIATION_SWEEP_SCHEDULE": "every night",
                "REMEDIATION_ARM_ENDPOINT": "http://management.azure.com",
                "REMEDIATION_PRINCIPAL_ID": "me",
                "REMEDIATION_INSTALL_QUEUE": "Bad_Queue",
                "REMEDIATION_AUDIT_TABLE": "1table",
                "AZURE_AUTHORITY_HOST": "ftp://login",
            }
        )
    problems = caught.value.problems
    named = {problem.split("=")[0].split(":")[0] for problem in problems}
    assert named == {
        "REMEDIATION_MODE",
        "REMEDIATION_SUBSCRIPTIONS",
        "REMEDIATION_ALLOW_PLAN_CHANGE",
        "REMEDIATION_SERVERS_PLAN",
        "REMEDIATION_MAX_ACTIONS_PER_SWEEP",
        "REMEDIATION_SWEEP_SCHEDULE",
        "REMEDIATION_ARM_ENDPOINT",
        "REMEDIATION_PRINCIPAL_ID",
        "REMEDIATION_INSTALL_QUEUE",
        "REMEDIATION_AUDIT_TABLE",
        "AZURE_AUTHORITY_HOST",
        "AzureWebJobsStorage",
    }
    assert "must be 'report' or 'enforce'" in str(caught.value)
    assert "not-a-guid" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REMEDIATION_SUBSCRIPTIONS", ""),
        ("REMEDIATION_SUBSCRIPTIONS", " , "),
        ("REMEDIATION_ARM_ENDPOINT", "https://management.azure.com/path?x=1"),
        ("REMEDIATION_EXCLUDE_TAG", "a/b"),
        ("REMEDIATION_INSTALL_QUEUE", "a--b"),
        ("REMEDIATION_INSTALL_QUEUE", "x" * 60),
        ("REMEDIATION_MAX_ACTIONS_PER_SWEEP", "1.5"),
        ("REMEDIATION_LRO_POLL_SECONDS", "soon"),
        ("REMEDIATION_MAX_REINSTALLS", "11"),
    ],
)
def test_a_bad_value_names_its_setting(name, value):
    with pytest.raises(SettingsError) as caught:
        load(MINIMAL | {name: value})
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(name)


def test_plan_change_takes_true_false_or_subscriptions_in_scope():
    assert load(MINIMAL | {"REMEDIATION_ALLOW_PLAN_CHANGE": SUB_A.upper()}).allow_plan_change == {
        SUB_A
    }
    with pytest.raises(SettingsError) as caught:
        load(MINIMAL | {"REMEDIATION_ALLOW_PLAN_CHANGE": SUB_B})
    assert "outside REMEDIATION_SUBSCRIPTIONS" in str(caught.value)
    with pytest.raises(SettingsError):
        load(MINIMAL | {"REMEDIATION_ALLOW_PLAN_CHANGE": "sometimes"})


def test_identity_based_storage_is_enough():
    settings = load(
        {"REMEDIATION_SUBSCRIPTIONS": SUB_A, "AzureWebJobsStorage__accountName": "stremediate"}
    )
    assert settings.storage_account == "stremediate"
    assert settings.storage_connection == ""


@pytest.mark.parametrize(
    ("authority", "disabled"),
    [
        ("", False),
        ("https://login.microsoftonline.com", False),
        ("https://login.microsoftonline.us/", False),
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
    names = {name for name in environ.asked if name.startswith("REMEDIATION_")}
    assert len(names) >= 15
    example = json.loads((root / "local.settings.example.json").read_text())["Values"]
    readme = (root / "README.md").read_text()
    assert names <= set(example), names - set(example)
    assert all(f"`{name}`" in readme for name in names), [
        n for n in names if f"`{n}`" not in readme
    ]
    assert example["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert example["REMEDIATION_MODE"] == "report"
    assert example["REMEDIATION_ALLOW_PLAN_CHANGE"] == "false"
    load(example)  # the example itself is valid
