"""`python -m oih_worker`: run one flow step (spec in OIH_WORKER_SPEC or OIH_WORKER_SPEC_FILE;
the step's resolved credentials, if any, as described in `credentials`)."""

from __future__ import annotations

import os
import sys

from oih_runtime import logs

from .credentials import from_env
from .runtime import run
from .spec import StepSpec


def main() -> int:
    spec = StepSpec.from_env()
    logs.configure(f"oih-worker.{spec.flow_id}.{spec.step_id}",
                   os.environ.get("OIH_LOG_LEVEL", "INFO"))
    return run(spec, from_env())


if __name__ == "__main__":
    sys.exit(main())
