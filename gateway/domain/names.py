"""Name rules: which strings Kubernetes accepts as names, labels and variables, and which names
Muster owns.

These are data, not checks: the job spec checks and the API apply them, each with its own message.

Invariants:
- Every pattern is anchored at both ends (``^…$``); use it with ``fullmatch``.
- A DNS-1035 label is also a DNS-1123 label (it only adds "starts with a letter"): job and role
  names must be DNS-1035 because Services are named after them.
- The reserved names are exactly those Muster writes itself: the environment variables carrying a
  gang's topology or device plan, and the label prefixes Muster and the Kubeflow operator set.
"""

from __future__ import annotations

import re

# DNS-1035 labels: Service names must start with a letter, so job and role names must too.
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
IMAGE = re.compile(r"^\S+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = re.compile(
    rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}$"
)
LABEL_VALUE = re.compile(rf"^({_LABEL_NAME})?$")
_LABEL_PREFIX = r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
_SELECTOR_TERM = rf"{_LABEL_PREFIX}{_LABEL_NAME}==?({_LABEL_NAME})?"
#: The start of a job id, as the CLI takes a short one (the OpenAPI ``id_prefix`` pattern).
ID_PREFIX = re.compile(r"[0-9a-f-]{1,36}")
#: An Idempotency-Key: 1 to 255 printable ASCII characters (the OpenAPI document's pattern).
IDEMPOTENCY_KEY = re.compile(r"[ -~]{1,255}")
#: A label selector of equality terms, ``team=ranking,tier==gold``: the API's ``label`` query
#: (the OpenAPI document's ``LabelSelector`` pattern is this one, held to it by a test).
LABEL_SELECTOR = re.compile(rf"^({_SELECTOR_TERM}(,{_SELECTOR_TERM})*)?$")

# Variables that carry the gang's topology or device plan. Muster writes them; a client may not.
RESERVED_ENV = frozenset(
    {
        "TF_CONFIG",
        "MASTER_ADDR",
        "MASTER_PORT",
        "WORLD_SIZE",
        "RANK",
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
    }
)
RESERVED_ENV_PREFIXES = ("PET_", "MUSTER_")
MUSTER_LABEL_PREFIXES = ("muster.dev/", "training.kubeflow.org/")
