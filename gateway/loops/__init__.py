"""Background loops: leadership, admission, the reconciler, and the runtime that runs them (with
webhook delivery) in a gateway process."""
