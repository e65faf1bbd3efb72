"""Webhook delivery: the SSRF guard on every outbound connection, and the loop that sends events.

The decisions (schedule, signatures, what an answer means) are ``gateway.domain.webhooks``; the
SQL is ``gateway.db.webhooks``. This package carries them out over HTTP.
"""
