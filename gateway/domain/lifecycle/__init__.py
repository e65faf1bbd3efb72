"""The job state machine, the decisions of the reconciler (restart, fail, succeed, evict), and
jobs as recorded (``records``: a job, its events, an active gang)."""
