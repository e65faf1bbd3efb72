"""PostgreSQL: the source of truth for tenants, quotas, jobs, placements, events and the outbox.

Mapping between rows and domain values lives here and nowhere else (``mapping``, one function per
value type): every public function returns values of ``gateway.domain``, never rows.
"""
