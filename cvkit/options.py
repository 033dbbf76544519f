"""Extra keyword options for plugin factories: ``--opt KIND.KEY=VALUE``.

``--opt optimizer.momentum=0.5 --opt model.dropout=0.1`` gives
``{"optimizer": {"momentum": 0.5}, "model": {"dropout": 0.1}}``. Values are read as YAML scalars
(numbers, booleans, null, lists such as ``[0.9,0.99]``), anything else stays a string.
"""

from __future__ import annotations

from cvkit.errors import UsageError
from cvkit.registry import KINDS


def parse_opts(items: list[str] | None) -> dict[str, dict]:
    import yaml

    result: dict[str, dict] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        kind, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise UsageError(f"--opt {item!r}: expected KIND.KEY=VALUE, e.g. optimizer.momentum=0.5")
        if kind not in KINDS:
            raise UsageError(f"--opt {item!r}: unknown kind {kind!r} (one of: {', '.join(KINDS)})")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        result.setdefault(kind, {})[name] = value
    return result
