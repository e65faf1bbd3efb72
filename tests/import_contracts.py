"""import-linter contract types of this project (``contract_types`` in ``pyproject.toml``).

``standard_library_only``: the modules of ``source_modules`` import nothing but the standard
library and modules inside the allowed packages. It is an allow-list: a third-party package, or a
module of this project outside the allowed packages, breaks it, whatever its name. The import graph
holds no standard-library modules, so every import it shows must be of an allowed package.
"""

from __future__ import annotations

import sys

import grimp
from importlinter import Contract, ContractCheck, fields, output


class StandardLibraryOnlyContract(Contract):
    type_name = "standard_library_only"

    source_modules = fields.ListField(subfield=fields.StringField())
    allowed_packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        allowed = [str(name) for name in self.allowed_packages]  # type: ignore[attr-defined]
        breaches: list[tuple[str, str]] = []
        for source in self.source_modules:  # type: ignore[attr-defined]
            modules = {str(source)} | graph.find_descendants(str(source))
            for module in sorted(modules):
                for imported in sorted(graph.find_modules_directly_imported_by(module)):
                    top = imported.split(".")[0]
                    if top in sys.stdlib_module_names:
                        continue
                    if any(imported == a or imported.startswith(a + ".") for a in allowed):
                        continue
                    breaches.append((module, imported))
        return ContractCheck(kept=not breaches, metadata={"breaches": breaches})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module, imported in check.metadata["breaches"]:
            output.print_error(f"{module} imports {imported}, which is not the standard library")
