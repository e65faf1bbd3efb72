"""Kubernetes quantities and Muster's integer resource units.

Muster keeps every amount as an integer so sums and comparisons are exact:

- CPU in millicores (``"500m"`` -> 500, ``"4"`` -> 4000),
- memory in bytes (``"4Gi"`` -> 4294967296),
- GPU in shares, one device being ``GPU_SHARES_PER_DEVICE`` (100) shares,
- extended resources (any other name a node advertises: ``rdma/hca``, ``amd.com/gpu``,
  ``nvidia.com/mig-1g.10gb``, ``hugepages-2Mi``, ``ephemeral-storage``) in whole units: devices
  for device-plugin names, bytes for hugepages and ephemeral storage. Kubernetes never
  over-commits or shares them, so a request is its limit.

An ``Extended`` amount is a tuple of ``(name, amount)`` pairs sorted by name, every amount above
zero: equal amounts are equal tuples, and a request without extended resources is ``()``.

Invariants: every parser returns a non-negative integer or raises ``QuantityError`` with a message a
person can act on; nothing is rounded silently (a CPU finer than 1m or a fractional byte is
refused).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

GPU_SHARES_PER_DEVICE = 100
# Generous ceilings that keep every amount inside PostgreSQL's bigint and catch typos like "4Ei".
MAX_CPU_MILLIS = 10**9
MAX_MEMORY_BYTES = 2**62
MAX_EXTENDED = 2**62

#: (resource name, amount) pairs sorted by name, amounts above zero.
Extended = tuple[tuple[str, int], ...]
#: Resource names Muster reads under their own keys (cpu, memory, gpu) or never allocates.
OWN_RESOURCE_NAMES = frozenset({"cpu", "memory", "gpu", "nvidia.com/gpu", "pods"})
#: Extended resources measured in bytes, like memory.
BYTE_RESOURCES = ("hugepages-", "ephemeral-storage")
_QUALIFIED = re.compile(
    r"^(?P<prefix>[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/"
    r"(?P<name>[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$"
)
_HUGEPAGES = re.compile(r"^hugepages-(?P<size>[0-9]+(Ki|Mi|Gi))$")

_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Resources:
    """An amount of each resource: a pod's request, a job's total, a quota's demand."""

    cpu_millis: int
    memory_bytes: int
    gpu_shares: int = 0
    extended: Extended = ()

    def plus(self, other: Resources) -> Resources:
        return Resources(
            cpu_millis=self.cpu_millis + other.cpu_millis,
            memory_bytes=self.memory_bytes + other.memory_bytes,
            gpu_shares=self.gpu_shares + other.gpu_shares,
            extended=merged(self.extended, other.extended),
        )


class QuantityError(ValueError):
    """A quantity that is not a valid, non-negative Kubernetes quantity in range."""


def parse_quantity(value: str | int | float) -> Decimal:
    """Parse a Kubernetes quantity (``"500m"``, ``"4Gi"``, ``"1e3"``, ``2``) exactly."""
    if isinstance(value, bool):
        raise QuantityError('must be a quantity such as "500m" or "4Gi", not a boolean')
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise QuantityError("must be a finite number")
        if value < 0:
            raise QuantityError("must not be negative")
        try:
            return Decimal(str(value))
        except ValueError as exc:  # an int too long to print (sys.int_info.str_digits_check)
            raise QuantityError("is far too large") from exc
    text = value.strip()
    match = _QUANTITY.fullmatch(text)
    if match is None:
        if text.startswith("-"):
            raise QuantityError(f"{value!r} is negative; quantities must not be negative")
        raise QuantityError(
            f'{value!r} is not a Kubernetes quantity (examples: "500m", "2", "4Gi", "512Mi")'
        )
    try:
        number = Decimal(match["number"])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise QuantityError(f"{value!r} is not a number") from exc
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    exponent = int(suffix[1:])
    if abs(exponent) > 30:
        raise QuantityError(f"{value!r} has an exponent out of range")
    return number.scaleb(exponent)


def cpu_millis(value: str | int | float) -> int:
    """CPU quantity -> millicores. Refuses amounts finer than 1m."""
    millis = parse_quantity(value) * 1000
    if millis != millis.to_integral_value():
        raise QuantityError(f"{value!r} is finer than 1m (one millicore)")
    result = int(millis)
    if result > MAX_CPU_MILLIS:
        raise QuantityError(f"{value!r} is more CPU than any node can have")
    return result


def memory_bytes(value: str | int | float) -> int:
    """Memory quantity -> bytes. Refuses fractional bytes."""
    amount = parse_quantity(value)
    if amount != amount.to_integral_value():
        raise QuantityError(f"{value!r} is not a whole number of bytes")
    result = int(amount)
    if result > MAX_MEMORY_BYTES:
        raise QuantityError(f"{value!r} is more memory than any node can have")
    return result


def gpu_shares(value: int | float | str) -> int:
    """GPU request -> shares: a whole count (1, 2, ...) or a fraction of one device (0 < g < 1).

    Fractions have a granularity of 0.01: ``0.5`` is 50 shares; ``1.5`` and ``0.005`` are refused.
    """
    if isinstance(value, str):
        raise QuantityError("must be a number such as 1 or 0.5, not a string")
    amount = parse_quantity(value)
    shares = amount * GPU_SHARES_PER_DEVICE
    if amount > 1 and amount != amount.to_integral_value():
        raise QuantityError(
            f"{value} GPUs: a request is either a whole count or a fraction of one device (< 1)"
        )
    if shares != shares.to_integral_value():
        raise QuantityError(f"{value} GPUs: fractions have a granularity of 0.01")
    if amount > 1024:
        raise QuantityError(f"{value} GPUs is more than any node can have")
    return int(shares)


MEMO_QUANTITY_CHARS = 32  # longer texts (whitespace around a quantity) are parsed every time


def _memoized(parse: Callable[[str | int | float], int]) -> Callable[[str | int | float], int]:
    """``parse`` with its results for short texts remembered (at most 512 of them).

    The quantity parsers are pure functions of their argument, and most jobs repeat a few texts
    ("4", "16Gi"), so a remembered result is always the one ``parse`` would return. Errors are
    raised afresh every time; numbers are not remembered (1, 1.0 and True are equal keys).
    """
    remembered = functools.lru_cache(maxsize=512)(parse)

    def parse_(value: str | int | float) -> int:
        if type(value) is str and len(value) <= MEMO_QUANTITY_CHARS:
            return remembered(value)
        return parse(value)

    return parse_


cached_cpu_millis = _memoized(cpu_millis)
cached_memory_bytes = _memoized(memory_bytes)
cached_gpu_shares = _memoized(gpu_shares)


def format_cpu(millis: int) -> str:
    """Millicores -> the shortest quantity (``4000`` -> ``"4"``, ``500`` -> ``"500m"``)."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_memory(amount: int) -> str:
    """Bytes -> the largest exact binary suffix (``4294967296`` -> ``"4Gi"``)."""
    for suffix, factor in reversed(_BINARY.items()):
        if amount and amount % factor == 0:
            return f"{amount // factor}{suffix}"
    return str(amount)


def format_gpu(shares: int) -> int | float:
    """Shares -> the GPU number users write (``200`` -> ``2``, ``50`` -> ``0.5``)."""
    if shares % GPU_SHARES_PER_DEVICE == 0:
        return shares // GPU_SHARES_PER_DEVICE
    return shares / GPU_SHARES_PER_DEVICE


def gpu_quota_shares(value: int | float | str) -> int:
    """A GPU quota -> shares. Unlike a request, a quota may be any amount in steps of 0.01."""
    if isinstance(value, str):
        raise QuantityError("must be a number such as 8 or 2.5, not a string")
    shares = parse_quantity(value) * GPU_SHARES_PER_DEVICE
    if shares != shares.to_integral_value():
        raise QuantityError(f"{value} GPUs: quotas have a granularity of 0.01")
    if shares > 10**9:
        raise QuantityError(f"{value} GPUs is out of range")
    return int(shares)


# -- extended resources ------------------------------------------------------------------------


def extended_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an extended resource a replica requests or a quota limits, or
    None. Extended resources are the names nodes advertise besides cpu, memory and
    nvidia.com/gpu: a device plugin's ``<domain>/<name>``, ``hugepages-<size>`` and
    ``ephemeral-storage``."""
    if name == "nvidia.com/gpu":
        return "nvidia.com/gpu is requested as gpu (whole devices or a fraction of one)"
    if name in OWN_RESOURCE_NAMES:
        return f"{name} is not an extended resource"
    if name == "ephemeral-storage" or _HUGEPAGES.fullmatch(name):
        return None
    if name.startswith("hugepages-"):
        return f"{name!r} is not a huge page size such as hugepages-2Mi or hugepages-1Gi"
    match = _QUALIFIED.fullmatch(name)
    if match is None or len(name) > 253 + 1 + 63 or len(match["name"]) > 63:
        return (
            f"{name!r} is not a resource name: extended resources are named <domain>/<name> "
            "(rdma/hca, amd.com/gpu, nvidia.com/mig-1g.10gb), hugepages-<size> or "
            "ephemeral-storage"
        )
    if match["prefix"] == "kubernetes.io" or match["prefix"].endswith(".kubernetes.io"):
        return f"{name!r}: names under kubernetes.io are Kubernetes' own, not extended resources"
    if match["prefix"] == "requests":
        return f"{name!r}: the prefix requests/ is reserved by Kubernetes"
    return None


def is_byte_resource(name: str) -> bool:
    return name.startswith(BYTE_RESOURCES)


def extended_amount(name: str, value: str | int | float) -> int:
    """An extended resource's quantity -> Muster's integer: bytes for hugepages and ephemeral
    storage (whole pages for hugepages), whole units for every other name."""
    amount = parse_quantity(value)
    if amount != amount.to_integral_value():
        unit = "bytes" if is_byte_resource(name) else "units (extended resources are not shared)"
        raise QuantityError(f"{value!r} is not a whole number of {unit}")
    result = int(amount)
    if result > MAX_EXTENDED:
        raise QuantityError(f"{value!r} is more than any node can have")
    page = _HUGEPAGES.fullmatch(name)
    if page is not None:
        size = int(parse_quantity(page["size"]))
        if size and result % size:
            raise QuantityError(f"{value!r} is not a whole number of {page['size']} pages")
    return result


def format_extended(name: str, amount: int) -> str:
    """An extended amount as a Kubernetes quantity (``hugepages-2Mi``: ``"1Gi"``; devices:
    ``"2"``)."""
    return format_memory(amount) if is_byte_resource(name) else str(amount)


def merged(a: Extended, b: Extended, sign: int = 1) -> Extended:
    """``a`` plus (``sign`` 1) or minus (``sign`` -1) ``b``, name by name; names that come to
    zero are dropped."""
    if not b:
        return a
    if not a and sign == 1:
        return b
    amounts = dict(a)
    for name, amount in b:
        amounts[name] = amounts.get(name, 0) + sign * amount
    return tuple(sorted((name, amount) for name, amount in amounts.items() if amount))


def sum_extended(amounts: Iterable[Extended]) -> Extended:
    """The sum of extended amounts, name by name."""
    total: Extended = ()
    for each in amounts:
        total = merged(total, each)
    return total


def times(amounts: Extended, count: int) -> Extended:
    """``amounts`` ``count`` times over (a role's replicas)."""
    if count <= 0:
        return ()
    return tuple((name, amount * count) for name, amount in amounts)


def amount_of(amounts: Extended, name: str) -> int:
    for own, amount in amounts:
        if own == name:
            return amount
    return 0
