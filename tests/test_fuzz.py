"""Fuzzing the app's edges with hypothesis: whatever arrives, the parsers answer with a
value or their own clear error, never a crash (and, being pure, never a write)."""

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remediation.config import GUID, SettingsError, load
from remediation.ops import InvalidQuery, parse_query
from remediation.queues import BadMessage, InstallRequest
from remediation.runs import InvalidSweepRequest, SweepRequest, parse_request
from remediation.sweep import BatchMessage

SUB = "11111111-1111-4111-8111-111111111111"
GUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
SETTINGS = load(
    {"REMEDIATION_SUBSCRIPTIONS": SUB, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=15), children, max_size=6)
    ),
    max_leaves=25,
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=300)))
def test_sweep_bodies_are_accepted_or_refused_with_problems(body):
    try:
        request = parse_request(body, SETTINGS)
    except InvalidSweepRequest as error:
        assert error.problems
        return
    assert isinstance(request, SweepRequest)
    # Well-formed ids, lower-cased; whether each is in scope is checked when the run starts.
    assert all(GUID.match(s) and s == s.lower() for s in request.subscriptions)
    assert request.mode.value == "report"  # a report-mode app never sweeps in enforce


@FAST
@given(
    st.dictionaries(
        st.sampled_from(
            ["vm", "subscription", "decision", "since", "until", "limit", "continuation", "x"]
        ),
        st.text(max_size=80),
        max_size=7,
    )
)
def test_log_queries_are_accepted_or_refused_with_problems(params):
    try:
        query = parse_query(params, SETTINGS, scope=SETTINGS.subscriptions)
    except InvalidQuery as error:
        assert error.problems
        return
    assert 1 <= query.limit <= 1000
    assert not query.subscription or query.subscription == SUB


@FAST
@given(st.one_of(json_values.map(json.dumps), st.text(max_size=200)))
def test_queue_messages_parse_or_are_refused(text):
    try:
        request = InstallRequest.parse(text)
    except BadMessage:
        pass
    else:
        assert request.vm.startswith("/subscriptions/")


def _near_batch_messages():
    """Sweep batch messages with each field valid or not: most reach the deep checks."""
    guid = st.uuids().map(str)
    return st.fixed_dictionaries(
        {
            "schema": st.sampled_from(["sweep-batch/1", "sweep-batch/2", ""]),
            "run_id": st.one_of(st.text(max_size=20), st.integers()),
            "batch": st.one_of(
                st.integers(), st.text(max_size=5), st.none(), st.sampled_from([float("inf")])
            ),
            "subscriptions": st.lists(
                st.one_of(guid, guid, guid.map(lambda g: g + "\n"), st.text(max_size=40)),
                max_size=3,
            ),
        }
    )


@pytest.mark.parametrize(
    "text",
    [
        '{"schema": "sweep-batch/1", "run_id": "r", "batch": Infinity, "subscriptions": []}',
        '{"schema": "sweep-batch/1", "run_id": "r", "batch": 0, "subscriptions": '
        '["11111111-1111-4111-8111-111111111111\\n"]}',
    ],
    ids=["infinite batch number", "a guid with a newline"],
)
def test_sweep_batch_messages_that_once_slipped_through_are_refused(text):
    with pytest.raises(ValueError, match=r"^not a sweep batch message$"):
        BatchMessage.parse(text)


@FAST
@given(st.one_of(_near_batch_messages().map(json.dumps), st.text(max_size=200)))
def test_sweep_batch_messages_parse_to_guids_or_are_refused_with_one_error(text):
    try:
        message = BatchMessage.parse(text)
    except ValueError as error:
        assert str(error) == "not a sweep batch message"
        return
    assert all(GUID_TEXT.fullmatch(s) for s in message.subscriptions)
    assert BatchMessage.parse(message.to_text()) == message


@FAST
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "REMEDIATION_MODE",
                "REMEDIATION_SUBSCRIPTIONS",
                "REMEDIATION_ALLOW_PLAN_CHANGE",
                "REMEDIATION_MAX_ACTIONS_PER_SWEEP",
                "REMEDIATION_SWEEP_SCHEDULE",
                "REMEDIATION_ARM_ENDPOINT",
                "REMEDIATION_INSTALL_QUEUE",
                "REMEDIATION_AUDIT_TABLE",
                "REMEDIATION_LRO_POLL_SECONDS",
                "AZURE_AUTHORITY_HOST",
                "AzureWebJobsStorage",
                "REMEDIATION_NOTIFY_TOPIC_ENDPOINT",
            ]
        ),
        st.text(max_size=60),
        max_size=12,
    )
)
def test_settings_load_or_name_every_problem(environ):
    try:
        loaded = load(environ)
    except SettingsError as error:
        assert error.problems
        assert all(
            problem.split("=")[0].split(":")[0] in environ
            or problem.startswith(("REMEDIATION_SUBSCRIPTIONS", "AzureWebJobsStorage"))
            for problem in error.problems
        )
        return
    assert loaded.subscriptions
    assert loaded.arm_endpoint.startswith("https://")
