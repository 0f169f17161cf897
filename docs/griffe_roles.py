"""A griffe extension for the API pages (mkdocs.yml): the docstrings' Sphinx roles as cross-references.

The docstrings name other objects the Sphinx way (``:func:`load_bundle```, ``:class:`~a.b.C```), which
Markdown would print as is. Each role becomes an optional cross-reference: a link where the target has a
page in the site, inline code where it has none. A relative name is looked up from the docstring's object
outwards (its members, then its class's, then its module's, following imports). A line ending in
``::`` before an indented block (a reST literal block) ends in ``:``, as Sphinx prints it.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|exc|obj):`(~?)([^`]+)`")
LITERAL_BLOCK = re.compile(r"(?<=\S)::$(?=\n\n[ \t])", re.MULTILINE)


def rewrite(text: str, resolve: Any = lambda name: name) -> str:
    """``text`` with every role outside code blocks replaced by an optional autoref to ``resolve(target)``."""

    def role(match: re.Match[str]) -> str:
        short, target = match.group(1), match.group(2).strip()
        shown = target.rsplit(".", 1)[-1] if short else target
        identifier = html.escape(resolve(target), quote=True)
        return f'<autoref identifier="{identifier}" optional><code>{html.escape(shown)}</code></autoref>'

    lines, fenced, indented, previous = [], False, False, ""
    for line in LITERAL_BLOCK.sub(":", text).split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif line.strip():  # Markdown's indented code block: 4 spaces after a blank line, until a line that is not
            indented = line.startswith(("    ", "\t")) and (indented or not previous.strip())
        lines.append(line if fenced or indented or line.lstrip().startswith("```") else ROLE.sub(role, line))
        previous = line
    return "\n".join(lines)


def resolver(obj: griffe.Object) -> Any:
    """Resolves a role's target as Python would from ``obj``'s docstring."""

    def resolve(target: str) -> str:
        head, _, rest = target.partition(".")
        scope: griffe.Object | None = obj
        while scope is not None:
            member = scope.all_members.get(head)  # a class's inherited members too
            if member is not None:
                path = member.target_path if isinstance(member, griffe.Alias) else member.path
                return f"{path}.{rest}" if rest else path
            scope = scope.parent
        return target

    return resolve


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring once the object tree is complete (imports resolvable)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value, resolver(obj))
