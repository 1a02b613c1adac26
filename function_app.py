"""The Azure Functions entry point (v2 programming model).

Triggers are thin adapters: decode, call one function of ``remediation.service``,
encode. No Defender logic and no ``azure.mgmt`` import belong here.
"""

import azure.functions as func

from remediation import service
from remediation.bootstrap import services

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("on_vm_event")
@app.event_grid_trigger(arg_name="event")
def on_vm_event(event: func.EventGridEvent) -> None:
    """A VM was written or started: re-read it, decide, act (or report)."""
    service.handle_event(services(), event)


@app.function_name("install_extension")
@app.queue_trigger(
    arg_name="message", queue_name="%REMEDIATION_INSTALL_QUEUE%", connection="AzureWebJobsStorage"
)
def install_extension(message: func.QueueMessage) -> None:
    """Install MDE on one VM. A raised TransientError is the host's cue to retry."""
    service.handle_install(services(), message.get_body().decode(), message.dequeue_count or 1)


@app.function_name("install_poison")
@app.queue_trigger(
    arg_name="message",
    queue_name="%REMEDIATION_INSTALL_QUEUE%-poison",
    connection="AzureWebJobsStorage",
)
def install_poison(message: func.QueueMessage) -> None:
    """An install that failed every retry: audit it, drop nothing silently."""
    service.handle_poison(services(), message.get_body().decode())
