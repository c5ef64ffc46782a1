"""The worker runtime (the original's "ferryman"): runs one flow step as one process.

Public API: `spec.StepSpec` / `spec.spec_from_flow`, the naming and declare/delete helpers of
`topology`, the dead-letter functions of `dead_letters`, and `runtime.run(spec)` (also
`python -m oih_worker` with `OIH_WORKER_SPEC` or `OIH_WORKER_SPEC_FILE`).
"""
