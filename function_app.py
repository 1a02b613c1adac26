"""The Azure Functions entry point (v2 programming model).

Triggers are thin adapters: decode, call one function of ``remediation``, encode.
No Defender logic and no ``azure.mgmt`` import belong here.
"""

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
