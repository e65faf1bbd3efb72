"""Scheduling: which pending jobs start, on which nodes, within which quota, and why the others
wait. It sees pods and nodes, never job specs (``jobs.pods`` turns a spec into pod requests)."""
