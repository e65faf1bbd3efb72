"""The job state machine and the decisions of the reconciler (restart, fail, succeed, evict)."""
