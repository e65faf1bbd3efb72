"""One exception tree: every error Muster defines derives from ``MusterError``, is defined in
``gateway.errors``, and is drawn in its docstring where it sits."""

from __future__ import annotations

import importlib
import pkgutil
import re

import gateway
from gateway import errors
from gateway.errors import MusterError

#: Exceptions that stay outside the tree on purpose, and why (gateway.errors says so too).
OUTSIDE_BY_DESIGN = {
    # The replica supervisor runs as a process of its own (python -m
    # gateway.backends.supervisor): its error never crosses into the gateway, which reads only
    # the exit status it records.
    "gateway.backends.supervisor.SandboxError",
    # The domain imports only the standard library (an import-linter contract), so it cannot
    # import gateway.errors; a ValueError like int("x")'s, every caller turns it into a
    # FieldProblem (422), a ConfigError or a logged warning before it leaves the caller.
    "gateway.domain.resources.QuantityError",
}


def _all_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a ``gateway`` module, by qualified name."""
    for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if not module.name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(module.name)
    found: dict[str, type[BaseException]] = {}
    pending: list[type[BaseException]] = [BaseException]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] == "gateway":
            found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def test_every_exception_muster_defines_is_a_muster_error() -> None:
    strays = [
        name
        for name, cls in _all_exceptions().items()
        if not issubclass(cls, MusterError) and name not in OUTSIDE_BY_DESIGN
    ]
    assert strays == []


def test_the_exceptions_outside_the_tree_are_the_ones_named() -> None:
    found = _all_exceptions()
    assert set(found) >= OUTSIDE_BY_DESIGN
    assert issubclass(found["gateway.domain.resources.QuantityError"], ValueError)


def test_every_muster_error_is_defined_in_gateway_errors() -> None:
    elsewhere = [
        name
        for name, cls in _all_exceptions().items()
        if issubclass(cls, MusterError) and cls.__module__ != "gateway.errors"
    ]
    assert elsewhere == []


def _drawn() -> dict[str, str | None]:
    """The tree in gateway.errors' docstring: each name and the name it hangs under."""
    assert errors.__doc__ is not None
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in errors.__doc__.splitlines():
        if line.strip() == "MusterError":
            parents["MusterError"] = None
            path = ["MusterError"]
            continue
        branch = re.match(r"^ {4}((?:[│ ] {3})*)[├└]── (\w+)", line)
        if branch is None or not path:
            continue
        depth = len(branch.group(1)) // 4 + 1
        del path[depth:]
        parents[branch.group(2)] = path[-1]
        path.append(branch.group(2))
    return parents


def test_the_docstring_draws_the_tree_as_the_classes_make_it() -> None:
    defined = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type)
        and issubclass(cls, MusterError)
        and cls.__module__ == errors.__name__
    }
    actual = {
        name: next((b.__name__ for b in cls.__bases__ if issubclass(b, MusterError)), None)
        for name, cls in defined.items()
    }
    assert _drawn() == actual


def test_the_ssrf_refusal_is_also_an_os_error_for_aiohttps_connector() -> None:
    refused = errors.AddressRefused("refused by the SSRF guard: 10.0.0.1 is private")
    assert isinstance(refused, OSError)
    assert str(refused) == errors.SSRF_PRIVATE_ADDRESS
    assert refused.detail.endswith("is private")


def test_an_invalid_token_is_a_401_with_rfc_6750s_error() -> None:
    refused = errors.InvalidToken("the token has expired")
    assert isinstance(refused, errors.Unauthorized)
    assert (refused.status, refused.error, refused.detail) == (
        401,
        "invalid_token",
        "the token has expired",
    )


def test_kubernetes_errors_are_not_client_errors() -> None:
    """A 404 from Kubernetes is no 404 for Muster's own callers."""
    for cls in (errors.KubernetesNotFound, errors.KubernetesConflict, errors.KubernetesForbidden):
        assert not issubclass(cls, errors.ClientError)
