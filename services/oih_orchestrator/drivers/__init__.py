"""How workers are run. `base` holds the `Driver` protocol every driver implements, the worker
states and `WorkerInfo`; `local` runs workers as processes on this machine; `kubernetes` runs
them as Deployments (imported only when chosen: the kubernetes client is optional).

The orchestrator's core imports only this package's face, never a driver by name.
"""

from .base import (
    FAILED,
    RESTARTING,
    RUNNING,
    STARTING,
    STOPPING,
    Driver,
    WorkerInfo,
    WorkerState,
)

__all__ = ["FAILED", "RESTARTING", "RUNNING", "STARTING", "STOPPING", "Driver", "WorkerInfo",
           "WorkerState"]
