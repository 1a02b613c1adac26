"""A local Azure control plane for tests, benchmarks and the demo. Never deployed."""

from localazure.estate import Estate, Extension, Principal, Subscription, Vm, generate
from localazure.server import Faults, LocalAzure

__all__ = [
    "Estate",
    "Extension",
    "Faults",
    "LocalAzure",
    "Principal",
    "Subscription",
    "Vm",
    "generate",
]
