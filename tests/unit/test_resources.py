"""Kubernetes quantities to Muster's integer units, and back."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.resources import (
    GPU_SHARES_PER_DEVICE,
    MAX_CPU_MILLIS,
    MAX_MEMORY_BYTES,
    QuantityError,
    cpu_millis,
    format_cpu,
    format_gpu,
    format_memory,
    gpu_quota_shares,
    gpu_shares,
    memory_bytes,
    parse_quantity,
)

KI, MI, GI, TI, EI = 2**10, 2**20, 2**30, 2**40, 2**60
PROPERTY = settings(database=None, max_examples=300, deadline=None)


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("500m", Decimal("0.5")),
        ("4Gi", Decimal(4 * GI)),
        ("1e3", Decimal(1000)),
        ("1E-3", Decimal("0.001")),
        ("1.5k", Decimal(1500)),
        (".5", Decimal("0.5")),
        ("5.", Decimal(5)),
        ("100n", Decimal("1e-7")),
        ("2u", Decimal("0.000002")),
        ("3M", Decimal(3_000_000)),
        ("  2  ", Decimal(2)),
        (2, Decimal(2)),
        (0.25, Decimal("0.25")),
    ],
)
def test_parse_quantity_is_exact(quantity: str | int | float, expected: Decimal) -> None:
    assert parse_quantity(quantity) == expected


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("500m", 500),
        ("4", 4000),
        ("0.5", 500),
        ("1.5", 1500),
        ("0.001", 1),
        ("1m", 1),
        ("1k", 1_000_000),
        ("2e2", 200_000),
        ("1000000u", 1000),
        ("0", 0),
        (2, 2000),
        (0.25, 250),
        (" 3 ", 3000),
        ("1000000", MAX_CPU_MILLIS),
    ],
)
def test_cpu_millis(quantity: str | int | float, expected: int) -> None:
    assert cpu_millis(quantity) == expected


@pytest.mark.parametrize(
    "quantity",
    [
        "-1",
        "-500m",
        "4Gx",
        "1.5.5",
        "",
        "4 Gi",
        "0.0001",  # finer than 1m
        "100u",
        "0.5m",
        "1e31",  # exponent out of range
        "1e-40",
        "1000001",  # above any node
        "abc",
        "1,5",
        "+1",
        "0x10",
        True,
        -1,
        -0.5,
        float("nan"),
        float("inf"),
    ],
)
def test_cpu_millis_refuses(quantity: str | int | float) -> None:
    with pytest.raises(QuantityError):
        cpu_millis(quantity)


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("4Gi", 4 * GI),
        ("512Mi", 512 * MI),
        ("1.5Gi", 3 * GI // 2),
        ("0.5Ki", 512),
        ("1G", 10**9),
        ("1e3", 1000),
        ("128974848", 128974848),
        ("129e6", 129_000_000),
        ("1Ti", TI),
        ("4Ei", MAX_MEMORY_BYTES),
        ("1000m", 1),
        (1024, 1024),
        (0, 0),
    ],
)
def test_memory_bytes(quantity: str | int | float, expected: int) -> None:
    assert memory_bytes(quantity) == expected


@pytest.mark.parametrize(
    "quantity",
    ["0.5", "1m", "1.5", "0.3Ki", "5Ei", "8Ei", "-1Gi", "lots", "4 Gi", "", 0.5, -1, True],
)
def test_memory_bytes_refuses(quantity: str | int | float) -> None:
    with pytest.raises(QuantityError):
        memory_bytes(quantity)


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [(0, 0), (1, 100), (2, 200), (8, 800), (1.0, 100), (0.5, 50), (0.01, 1), (0.99, 99)],
)
def test_gpu_shares(gpu: int | float, expected: int) -> None:
    assert gpu_shares(gpu) == expected


@pytest.mark.parametrize(
    "gpu",
    [1.5, 2.25, 0.333, 0.005, -1, -0.5, "1", "0.5", True, 1025, float("nan"), float("inf")],
)
def test_gpu_shares_refuses(gpu: int | float | str) -> None:
    with pytest.raises(QuantityError):
        gpu_shares(gpu)


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [(0, 0), (8, 800), (2.5, 250), (0.01, 1), (1.5, 150), (10_000_000, 10**9)],
)
def test_gpu_quota_shares(gpu: int | float, expected: int) -> None:
    assert gpu_quota_shares(gpu) == expected


@pytest.mark.parametrize("gpu", ["8", 0.333, 0.001, -1, 10_000_001, True, float("nan")])
def test_gpu_quota_shares_refuses(gpu: int | float | str) -> None:
    with pytest.raises(QuantityError):
        gpu_quota_shares(gpu)


@pytest.mark.parametrize(
    ("millis", "text"),
    [(0, "0"), (1, "1m"), (500, "500m"), (1000, "1"), (1500, "1500m"), (64_000, "64")],
)
def test_format_cpu(millis: int, text: str) -> None:
    assert format_cpu(millis) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (0, "0"),
        (1, "1"),
        (1000, "1000"),
        (1024, "1Ki"),
        (1536, "1536"),
        (3 * MI, "3Mi"),
        (1536 * MI, "1536Mi"),
        (4 * GI, "4Gi"),
        (TI, "1Ti"),
        (EI, "1Ei"),
        (MAX_MEMORY_BYTES, "4Ei"),
    ],
)
def test_format_memory(amount: int, text: str) -> None:
    assert format_memory(amount) == text


@pytest.mark.parametrize(
    ("shares", "number"),
    [(0, 0), (1, 0.01), (50, 0.5), (99, 0.99), (100, 1), (800, 8), (250, 2.5)],
)
def test_format_gpu(shares: int, number: int | float) -> None:
    formatted = format_gpu(shares)

    assert formatted == number
    assert isinstance(formatted, int) == (shares % GPU_SHARES_PER_DEVICE == 0)


@PROPERTY
@given(st.integers(min_value=0, max_value=MAX_CPU_MILLIS))
def test_format_cpu_round_trips(millis: int) -> None:
    assert cpu_millis(format_cpu(millis)) == millis


@PROPERTY
@given(st.integers(min_value=0, max_value=MAX_MEMORY_BYTES))
def test_format_memory_round_trips(amount: int) -> None:
    assert memory_bytes(format_memory(amount)) == amount


@PROPERTY
@given(
    st.integers(min_value=0, max_value=1024).map(lambda n: n * GPU_SHARES_PER_DEVICE)
    | st.integers(min_value=1, max_value=GPU_SHARES_PER_DEVICE - 1)
)
def test_format_gpu_round_trips_for_requests(shares: int) -> None:
    assert gpu_shares(format_gpu(shares)) == shares


@PROPERTY
@given(st.integers(min_value=0, max_value=10**9))
def test_format_gpu_round_trips_for_quotas(shares: int) -> None:
    assert gpu_quota_shares(format_gpu(shares)) == shares


@PROPERTY
@given(st.text(max_size=12) | st.integers() | st.floats())
def test_parsers_return_a_non_negative_int_or_raise_quantity_error(
    value: str | int | float,
) -> None:
    for parse in (cpu_millis, memory_bytes, gpu_shares, gpu_quota_shares):
        try:
            result = parse(value)
        except QuantityError:
            continue
        assert isinstance(result, int)
        assert result >= 0


def test_an_absurdly_large_integer_is_a_quantity_error() -> None:
    with pytest.raises(QuantityError):
        cpu_millis(10**5000)
