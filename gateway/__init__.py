"""Muster: a job-queue gateway for distributed ML training on Kubernetes.

The package is layered; imports only point down (checked by import-linter):

    gateway.cli      the `muster` command
    gateway.api      the aiohttp application: routes, problems, request parsing
    gateway.db       PostgreSQL: models, migrations, the embedded server, repositories
    gateway.domain   the pure core: specs, resources, states, admission (standard library only)
"""

__version__ = "0.1.0"
