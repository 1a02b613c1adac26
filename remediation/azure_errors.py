"""Azure SDK errors -> the app's errors: TransientError (retry later) or PermanentError (a
human must act, the hint says how), with Compute's 409s told apart. Messages are safe to
log and record: they quote ARM's error code and message, never a request body.

Sources: the SDK's exception kinds (azure-core: 401 ClientAuthenticationError, 404
ResourceNotFoundError, an LRO that ends Failed raises HttpResponseError with status 200);
Compute's error-code reference for the 409s; docs/fidelity.md lists each shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.rest import HttpRequest, HttpResponse

from remediation.model import (
    BlockedByExtension,
    OperationInProgress,
    PermanentError,
    TransientError,
    VmNotRunning,
)

T = TypeVar("T")


def sent(what: str, client: Any, request: HttpRequest) -> HttpResponse:
    """A raw request through an SDK client's pipeline (``send_request`` of a management
    client or a PipelineClient: credential, retries, counting);
    an error status leaves translated, as the SDK's own calls do."""
    response: HttpResponse = translated(what, partial(client.send_request, request))
    try:
        response.raise_for_status()
    except HttpResponseError as error:
        raise translate(error, what) from None
    return response


def translated(what: str, call: Callable[[], T]) -> T:
    """Run one SDK call; its errors leave as the app's TransientError (retry later) or
    PermanentError (a human must act), with a message an operator can act on."""
    try:
        return call()
    except (TransientError, PermanentError):
        raise
    except ClientAuthenticationError as error:
        if _unanswered(error):  # the token authority did not answer at all
            raise TransientError(
                f"{what}: the token authority did not answer ({error_message(error)})"
            ) from None
        raise PermanentError(
            f"{what}: authentication failed ({error_message(error)})",
            hint="check the app's managed identity or AZURE_CLIENT_ID/AZURE_TENANT_ID",
        ) from None
    except HttpResponseError as error:
        raise translate(error, what) from None
    except (ServiceRequestError, ServiceResponseError) as error:
        raise TransientError(f"{what}: {type(error).__name__}: {error}") from None


# azure-identity reports a token request that got no answer as a ClientAuthenticationError
# with no response and urllib3's words in its text (DefaultAzureCredential wraps it, so
# no exception chain says more); an answer from Entra ID carries an AADSTS code.
_NO_ANSWER = re.compile(
    r"Failed to establish a new connection|Connection (refused|aborted|reset)|timed out|"
    r"Max retries exceeded|Failed to resolve|RemoteDisconnected|no response|"
    r"EOF occurred|IncompleteRead|Connection broken|"
    # An answer that is an outage, not a refusal: azure-identity words a 5xx, 408 or 429
    # from the token endpoint "Authentication failed: HTTP Error: 503" (seen here, with
    # azure-identity 1.27 and the local plane's token endpoint answering 503).
    r"HTTP Error: (?:5\d\d|408|429)\b",
    re.IGNORECASE,
)


def _unanswered(error: ClientAuthenticationError) -> bool:
    """The token authority did not answer, or answered with an outage: transient."""
    text = str(error)
    return error.response is None and "AADSTS" not in text and bool(_NO_ANSWER.search(text))


def error_message(error: HttpResponseError | ClientAuthenticationError) -> str:
    inner = getattr(error, "error", None)
    message = getattr(inner, "message", None) or str(error.message or error)
    return message.splitlines()[0][:500]


def _error_code(error: HttpResponseError) -> str:
    inner = getattr(error, "error", None)
    return str(getattr(inner, "code", "") or "")


def _detail_codes(error: HttpResponseError) -> str:
    """The codes of an error's details, where it has some: Resource Graph says
    'BadRequest' and puts what is wrong in a detail (ManagementGroupsContainInvalidIds)."""
    inner = getattr(error, "error", None)
    codes = [str(getattr(d, "code", "") or "") for d in getattr(inner, "details", None) or []]
    return ", ".join(code for code in codes if code)


def failed_extension(message: str) -> str:
    """The extension Compute names in 'VM has reported a failure when processing
    extension 'X' (publisher ...)' or '... since VM has extension 'X' in failed state'."""
    match = re.search(
        r"processing extension '([^']+)'|has extension '([^']+)' in failed state", message
    )
    return (match[1] or match[2]) if match else ""


def _inner_code(error: HttpResponseError) -> str:
    inner = getattr(getattr(error, "error", None), "innererror", None) or {}
    return str(inner.get("internalErrorCode", "")) if isinstance(inner, dict) else ""


def translate(error: HttpResponseError, what: str) -> TransientError | PermanentError:
    status = error.status_code or 0
    code = _error_code(error)
    message = error_message(error)
    details = _detail_codes(error)
    if details:
        message = f"{details}: {message}"
    if status == 403:
        return PermanentError(
            f"{what}: forbidden ({code})",
            hint=_forbidden_hint(what, message),
            status=status,
            code=code,
        )
    if isinstance(error, ResourceNotFoundError) or status == 404:
        return PermanentError(f"{what}: not found ({code})", status=404, code=code)
    if status == 409:
        return _conflict(what, code, _inner_code(error), message)
    if status in {408, 429} or status >= 500:
        return TransientError(f"{what}: HTTP {status} {code}: {message}", status=status, code=code)
    return PermanentError(f"{what}: HTTP {status} {code}: {message}", status=status, code=code)


def _conflict(what: str, code: str, inner: str, message: str) -> TransientError | PermanentError:
    """Compute's 409s told apart (the Compute error-code reference): the VM is not
    running; another extension is Failed; the VM is being deleted; a lock; an operation
    in progress. Anything else is retried by the queue."""
    text = f"{what}: {message}"
    lowered = message.lower()
    # "The operation requires the VM to be running (or set to run)." (Run Command)
    not_running = "vm is not running" in lowered or "requires the vm to be running" in lowered
    if inner == "CannotModifyExtensionsWhenVMNotRunning" or not_running:
        return VmNotRunning(text, status=409, code=code)
    failed = failed_extension(message)
    if failed:
        return BlockedByExtension(
            text,
            failed,
            hint=f"repair or remove the Failed extension '{failed}' on the VM; the next "
            "sweep installs MDE then",
            status=409,
            code=code,
        )
    if "marked for deletion" in lowered:  # the VM (or the extension) is going away
        return PermanentError(text, hint="the VM is being deleted", status=404, code=code)
    if code == "ScopeLocked":  # a read-only lock: no retry will get through it
        return PermanentError(
            text,
            hint="remove the ReadOnly lock on the VM or its resource group, or exclude the VM",
            status=409,
            code=code,
        )
    if "in progress" in lowered:
        return OperationInProgress(text, status=409, code=code)
    return TransientError(f"{what}: HTTP 409 {code}: {message}", status=409, code=code)


def _forbidden_hint(what: str, message: str) -> str:
    scope = re.search(r"over scope '([^']+)'", message)
    action = re.search(r"perform action '([^']+)'", message)
    where = scope[1] if scope else "the subscription"
    needs = action[1] if action else "the operation"
    if "Defender for Endpoint" in what:
        return (
            "grant the app's identity the WindowsDefenderATP application permission "
            "Machine.Read.All (README: Verification), or empty REMEDIATION_MDE_API"
        )
    if "Microsoft.Security" in needs or "Defender" in what or "setting" in what:
        return (
            f"grant the app's identity {needs} on {where}: the deployment's custom role has "
            "it with enableIntegration (or allowPlanChange for pricings), as has Security Admin"
        )
    return f"grant the app's identity a role with {needs} on {where}"
