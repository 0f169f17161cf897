"""The documentation site (mkdocs.yml) without building it: every page is in the nav and every nav entry
exists, and every ``::: identifier`` of an API page names a module (and its objects, and its listed
members) that exists. ``mkdocs build --strict`` itself runs in .ci/run."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
DIRECTIVE = re.compile(r"^::: *(\S+)[ \t]*\n((?:[ \t]+\S.*\n?)*)", re.MULTILINE)


def nav_pages(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in nav_pages(value)]
    return []


def directives() -> list[tuple[str, str, list[str]]]:
    """(page, identifier, members listed in its options) of every ``:::`` in the docs."""
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        for match in DIRECTIVE.finditer(page.read_text()):
            block = yaml.safe_load(match.group(2).replace("\t", "    ")) if match.group(2).strip() else None
            members = ((block or {}).get("options") or {}).get("members") or []
            out.append((str(page.relative_to(DOCS)), match.group(1), list(members)))
    return out


def module_of(identifier: str) -> tuple[str, Path, list[str]]:
    """The longest prefix of ``identifier`` that is a module of this repository (what griffe reads), its
    file and the names after it. Found by its file: looking up ``trainables.engine.X`` with the import
    system would import torch."""
    parts = identifier.split(".")
    for i in range(len(parts), 0, -1):
        path = REPO.joinpath(*parts[:i])
        for file in (path.with_suffix(".py"), path / "__init__.py"):
            if file.is_file():
                return ".".join(parts[:i]), file, parts[i:]
    raise AssertionError(f"{identifier}: no module of this repository")


def defined(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """The names a module or class body defines (functions, classes, assignments)."""
    out: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.Assign):
            out.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
    return out


def test_nav_lists_every_page_once_and_only_existing_pages():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    pages = nav_pages(config["nav"])
    assert len(pages) == len(set(pages)), f"a page is in the nav twice: {pages}"
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml nav names pages that do not exist under docs/: {missing}"
    unlisted = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if str(p.relative_to(DOCS)) not in pages)
    assert not unlisted, f"pages missing from the mkdocs.yml nav: {unlisted}"


DIRECTIVES = directives()


def test_api_pages_exist():
    assert {page for page, _, _ in DIRECTIVES} >= {"api/run-search.md", "api/bundle.md", "api/method-configs.md"}


@pytest.mark.parametrize("page,identifier,members", DIRECTIVES, ids=[f"{p}:{i}" for p, i, _ in DIRECTIVES])
def test_directive_names_an_existing_object(page, identifier, members):
    module, file, names = module_of(identifier)
    assert importlib.util.find_spec(module) is not None, f"{page}: {module} is not importable"  # imports its parents only
    scope = defined(ast.parse(file.read_text()).body)
    path = module
    for name in names:
        assert name in scope, f"{page}: {path} defines no {name!r} (::: {identifier})"
        node, path = scope[name], f"{path}.{name}"
        scope = defined(node.body) if isinstance(node, ast.ClassDef) else {}
    absent = [m for m in members if m not in scope]
    assert not absent, f"{page}: {identifier} has no members {absent}"


def test_sphinx_roles_become_optional_cross_references():
    pytest.importorskip("griffe")  # the dev extra's mkdocstrings[python]
    spec = importlib.util.spec_from_file_location("griffe_roles", DOCS / "griffe_roles.py")
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    text = "Layout (see :func:`save`)::\n\n    a  :func:`kept`\n\nAn :class:`~a.b.C`.\nEq:\n    then :mod:`m`"
    assert roles.rewrite(text) == (
        'Layout (see <autoref identifier="save" optional><code>save</code></autoref>):\n\n'
        "    a  :func:`kept`\n\n"  # a literal block stays as written
        'An <autoref identifier="a.b.C" optional><code>C</code></autoref>.\nEq:\n'
        '    then <autoref identifier="m" optional><code>m</code></autoref>'  # a paragraph's continuation line
    )
