"""The Azure Functions entry point (v2 programming model).

Triggers are thin adapters: decode, call one function of ``remediation``, encode. No
Defender logic and no ``azure.mgmt`` import belong here. The pipeline is imported on a
trigger's first call, not when the host indexes the app: that keeps cold start short.
"""

import json
import os
from typing import Any

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

# The pages people open (report, log, status) take a Microsoft Entra access token when
# REMEDIATION_PAGES_SIGN_IN=entra: the app checks it itself (remediation/signin.py), as
# App Service authentication does not guard a Flex Consumption app. The host then asks no
# key for them. Otherwise, and for the automation routes always, a function key.
SIGN_IN = os.environ.get("REMEDIATION_PAGES_SIGN_IN", "").strip().lower() == "entra"
PAGES = func.AuthLevel.ANONYMOUS if SIGN_IN else func.AuthLevel.FUNCTION


@app.function_name("on_vm_event")
@app.queue_trigger(
    arg_name="message", queue_name="%REMEDIATION_EVENT_QUEUE%", connection="AzureWebJobsStorage"
)
def on_vm_event(message: func.QueueMessage) -> None:
    """A VM was written or started: re-read it, decide, act (or report). Event Grid puts
    each event on the queue (a StorageQueue destination, docs/deploy.md)."""
    from remediation import handlers  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    handlers.handle_queued_event(services(), message.get_body())


@app.function_name("on_vm_event_poison")
@app.queue_trigger(
    arg_name="message",
    queue_name="%REMEDIATION_EVENT_QUEUE%-poison",
    connection="AzureWebJobsStorage",
)
def on_vm_event_poison(message: func.QueueMessage) -> None:
    """An event that failed every try: audit it, drop nothing silently."""
    from remediation import handlers  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    handlers.handle_event_poison(services(), message.get_body())


@app.function_name("install_extension")
@app.queue_trigger(
    arg_name="message", queue_name="%REMEDIATION_INSTALL_QUEUE%", connection="AzureWebJobsStorage"
)
def install_extension(message: func.QueueMessage) -> None:
    """Install MDE on one VM. A raised TransientError is the host's cue to retry."""
    from remediation import handlers  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    handlers.handle_install(
        services(), message.get_body(), message.dequeue_count or 1, message.id or ""
    )


@app.function_name("install_poison")
@app.queue_trigger(
    arg_name="message",
    queue_name="%REMEDIATION_INSTALL_QUEUE%-poison",
    connection="AzureWebJobsStorage",
)
def install_poison(message: func.QueueMessage) -> None:
    """An install that failed every retry: audit it, drop nothing silently."""
    from remediation import handlers  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    handlers.handle_poison(services(), message.get_body())


@app.function_name("nightly_sweep")
@app.timer_trigger(arg_name="timer", schedule="%REMEDIATION_SWEEP_SCHEDULE%", run_on_startup=False)
def nightly_sweep(timer: func.TimerRequest) -> None:
    """Every VM in scope, every night: events miss things."""
    from remediation import sweep  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    sweep.start_nightly(services())


@app.function_name("forced_sweep")
@app.route(route="sweep", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def forced_sweep(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/sweep {"subscriptions": [...], "mode": "report"}: start a sweep now."""
    from remediation import sweep  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    status_base = req.url.split("?", 1)[0]
    return _json(*sweep.http_start(services(), req.get_body(), status_base))


@app.function_name("sweep_status")
@app.route(route="sweep/{runId}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def sweep_status(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/sweep/{runId}: a run's progress, and its summary once done."""
    from remediation import sweep  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    return _json(*sweep.http_status(services(), req.route_params.get("runId", "")))


@app.function_name("sweep_batch")
@app.queue_trigger(
    arg_name="message", queue_name="%REMEDIATION_SWEEP_QUEUE%", connection="AzureWebJobsStorage"
)
def sweep_batch(message: func.QueueMessage) -> None:
    """One batch of subscriptions of a sweep run; many instances share a large tenant."""
    from remediation import sweep  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    sweep.handle_batch(services(), message.get_body())


@app.function_name("sweep_batch_poison")
@app.queue_trigger(
    arg_name="message",
    queue_name="%REMEDIATION_SWEEP_QUEUE%-poison",
    connection="AzureWebJobsStorage",
)
def sweep_batch_poison(message: func.QueueMessage) -> None:
    """A batch that failed every try: count it, so the run still finishes and says so."""
    from remediation import sweep  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    sweep.handle_batch_poison(services(), message.get_body())


@app.function_name("test_alert")
@app.route(route="test-alert", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def test_alert(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/test-alert {"vm": "<id>"}: run the harmless MDE test alert (opt-in)."""
    from remediation import testalert  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    status_base = req.url.split("?", 1)[0]
    return _json(*testalert.http_start(services(), req.get_body(), status_base))


@app.function_name("test_alert_status")
@app.route(route="test-alert/{testId}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def test_alert_status(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/test-alert/{testId}: a test alert's progress and result."""
    from remediation import testalert  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    return _json(*testalert.http_status(services(), req.route_params.get("testId", "")))


@app.function_name("test_alert_step")
@app.queue_trigger(
    arg_name="message",
    queue_name="%REMEDIATION_TEST_ALERT_QUEUE%",
    connection="AzureWebJobsStorage",
)
def test_alert_step(message: func.QueueMessage) -> None:
    """One step of a test alert: run the detection test, or look for its alert."""
    from remediation import testalert  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    testalert.handle(services(), message.get_body())


@app.function_name("test_alert_poison")
@app.queue_trigger(
    arg_name="message",
    queue_name="%REMEDIATION_TEST_ALERT_QUEUE%-poison",
    connection="AzureWebJobsStorage",
)
def test_alert_poison(message: func.QueueMessage) -> None:
    """A test-alert step that failed every try: the test ends as failed, recorded."""
    from remediation import testalert  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    testalert.handle_poison(services(), message.get_body())


@app.function_name("remediations")
@app.route(route="remediations", methods=["GET"], auth_level=PAGES)
def remediations(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/remediations?vm=&subscription=&decision=&since=&until=&limit=&continuation="""
    from remediation import ops  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    return _signed_in(req) or _json(*ops.http_remediations(services(), dict(req.params)))


@app.function_name("coverage_report")
@app.route(route="report", methods=["GET"], auth_level=PAGES)
def coverage_report(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/report: the coverage report, one self-contained HTML page."""
    from remediation import report  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    refused = _signed_in(req)
    if refused:
        return refused
    page = report.render(report.gather(services()))
    return func.HttpResponse(page, mimetype="text/html", charset="utf-8", headers=report.HEADERS)


@app.function_name("coverage_status")
@app.route(route="status", methods=["GET"], auth_level=PAGES)
def coverage_status(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/status?subscription=: what is uncovered right now, read-only."""
    from remediation import status  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    return _signed_in(req) or _json(*status.http_status(services(), dict(req.params)))


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/health: can the app do its job in each subscription? 200, else 503."""
    from remediation import doctor  # noqa: PLC0415 - cold start
    from remediation.bootstrap import services  # noqa: PLC0415

    return _json(*doctor.http_health(services()))


def _signed_in(req: func.HttpRequest) -> func.HttpResponse | None:
    """With sign-in on, a page answers only a request with a valid Entra token for it;
    no header a client can set by itself (X-MS-CLIENT-PRINCIPAL-ID) is trusted."""
    from remediation.bootstrap import page_gate  # noqa: PLC0415 - cold start

    gate = page_gate()
    refusal = gate.check(req.headers.get("authorization")) if gate else None
    if refusal is None:
        return None
    response = _json(refusal.status, {"errors": [refusal.reason]})
    if refusal.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


def _json(status: int, body: dict[str, Any]) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")
