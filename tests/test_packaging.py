"""What a built wheel holds: every package of cvkit/ is listed in pyproject.toml (the list is explicit)."""

from __future__ import annotations

import tomllib

from conftest import REPO


def test_every_cvkit_package_is_in_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "cvkit").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
