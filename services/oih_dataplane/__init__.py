"""The data-plane contract between the orchestrator and its workers, imported by both.

- `spec`: `StepSpec`, what one worker runs (built by the orchestrator from a flow).
- `topology`: the names of a flow's exchange, queues and broker users, and their declare and
  delete helpers.
- `envelope`: a `Message` as the AMQP body, properties and `oih-*` headers workers read.
- `dead_letters`: browsing, discarding and replaying a step's dead-letter queue.

The worker process itself (`runtime`, `process`, `reports`) lives in `oih_worker`.
"""
