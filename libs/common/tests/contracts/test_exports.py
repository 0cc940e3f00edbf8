"""The curated ``__all__`` of ``gridloop_common.contracts`` is exactly what its model submodules define.

``contracts.routing`` holds names, not models, and is imported as a module, so it is not re-exported.
"""

import ast
import importlib
import inspect
from types import ModuleType

import pytest

from gridloop_common import contracts

MODEL_SUBMODULES = ("agent", "device_metadata", "flux", "forecasts", "grid_services", "plans", "sites", "upstream")


def submodule(name: str) -> ModuleType:
    return importlib.import_module(f"{contracts.__name__}.{name}")


def public_names_defined_in(module: ModuleType) -> set[str]:
    """Top-level classes, functions and assignments of ``module`` that are not private or dunder."""
    names: set[str] = set()
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_")}


def test_package_exports_exactly_the_submodules_public_names() -> None:
    defined = set().union(*(public_names_defined_in(submodule(name)) for name in MODEL_SUBMODULES))

    assert set(contracts.__all__) == defined
    assert len(contracts.__all__) == len(set(contracts.__all__))


@pytest.mark.parametrize("name", MODEL_SUBMODULES)
def test_each_submodule_all_lists_its_public_names(name: str) -> None:
    module = submodule(name)

    assert set(module.__all__) == public_names_defined_in(module)


def test_exports_are_the_submodules_objects() -> None:
    for name in contracts.__all__:
        owners = [module for module in map(submodule, MODEL_SUBMODULES) if name in module.__all__]
        assert len(owners) == 1, name
        assert getattr(contracts, name) is getattr(owners[0], name)
