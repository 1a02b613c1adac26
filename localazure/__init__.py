"""A local Azure control plane for tests, benchmarks and the demo. Never deployed."""

from localazure.estate import Estate, Extension, Principal, Subscription, Vm, generate
from localazure.machinery import Faults
from localazure.server import LocalAzure

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
