"""The functional core: pure Python, standard library only, no I/O.

Four ideas, one subpackage each, layered so that imports only point down:

- ``manifests``: what a job becomes on a cluster (Kubernetes objects, a replica's environment),
  and ``lifecycle``: the job state machine, what the reconciler does next, and jobs as recorded
  (a job, its events, an active gang);
- ``jobs``: job specs as values, their checks, stored documents read back, pod names, and the
  Kubeflow TFJob translation;
- ``scheduling``: admission and placement (nodes, capacity, best fit, gangs), quotas, priority,
  and why a job waits; it knows pods and nodes, never specs;
- the base every layer shares: ``resources`` (quantities and units), ``names`` (name rules) and
  ``problems`` (client input problems located by JSON pointers).

``access`` (who may do what), ``tenants`` (tenants as recorded, their status and audit entries)
and ``webhooks`` (delivery decisions, and deliveries as recorded) stand beside them. The
import-linter contracts in ``pyproject.toml`` keep the layering and the standard-library rule.

The values the database layer returns are defined here (``gateway.db.mapping`` makes them from
rows), so no layer above the database reads a row.
"""
