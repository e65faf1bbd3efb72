"""Cluster backends: where nodes come from and where pods run.

``static`` reads a node list from a file (tests, benchmarks, demos); ``local`` is this machine;
``kubernetes`` is a real cluster. Every backend feeds the same admission snapshot.
"""
