"""The worker runtime (the original's "ferryman"): runs one flow step as one process.

`runtime.run(spec)` (also `python -m oih_worker` with `OIH_WORKER_SPEC` or
`OIH_WORKER_SPEC_FILE`) is the pika shell; `process` is its pure decision core and `reports`
batches what it did for the executions view. The contract it shares with the orchestrator
(spec, topology, envelope, dead letters) lives in `oih_dataplane`.
"""
