"""`cvkit plugins` and `cvkit list`: what the plugins provide. Imports no torch."""

from __future__ import annotations

import fnmatch

from cvkit.errors import UsageError
from cvkit.plugins import Plugins
from cvkit.registry import KINDS

REGISTRY_NAMES = list(KINDS.values())


def plugins_report(plugins: Plugins) -> dict:
    return {
        "plugins": [p.as_dict() for p in plugins.infos],
        "problems": plugins.problems(),
    }


def list_entries(plugins: Plugins, kind: str | None = None, pattern: str | None = None) -> dict:
    """The registered entries by registry name; ``kind`` may be singular or plural."""
    if kind is None:
        names = REGISTRY_NAMES
    else:
        plural = KINDS.get(kind, kind)
        if plural not in REGISTRY_NAMES:
            raise UsageError(f"cvkit list {kind!r}: unknown kind (one of: {', '.join(REGISTRY_NAMES)})")
        names = [plural]
    report = {}
    for name in names:
        reg = plugins[name]
        rows = []
        for entry in reg.entries():
            row = {"name": entry.name, "plugin": entry.plugin, "help": entry.help}
            if name == "models":
                row.update(input_size=list(entry.meta["input_size"]), mean=list(entry.meta["mean"]),
                           std=list(entry.meta["std"]),
                           default_transforms=entry.meta.get("default_transforms"),
                           family=entry.meta.get("family"))
            rows.append(row)
        for conflicted, entries in reg.conflicts.items():
            rows.append({"name": conflicted, "plugin": ", ".join(e.plugin for e in entries),
                         "help": "CONFLICT: registered by more than one plugin; unusable", "conflict": True})
        if pattern:
            rows = [r for r in rows if fnmatch.fnmatch(r["name"], pattern)]
        report[name] = sorted(rows, key=lambda r: r["name"])
    return report


def render_plugins(report: dict) -> None:
    from rich.table import Table

    from cvkit import ui

    table = Table(title="cvkit plugins", title_justify="left")
    for col in ("plugin", "distribution", "status", "hooks", "registered"):
        table.add_column(col, overflow="fold")
    for p in report["plugins"]:
        if p["status"] == "loaded":
            status = "[green]loaded[/]"
            registered = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["registered"].items()) or "-"
        elif p["status"] == "disabled":
            status, registered = "[yellow]disabled[/]", "-"
        else:
            status = f"[red]failed in {p['stage']}[/]"
            registered = f"[red]{p['error']}[/]"
        dist = f"{p['distribution']} {p['version']}" + (" (built-in)" if p["builtin"] else "")
        table.add_row(p["name"], dist, status, ", ".join(p["hooks"]) or "-", registered)
    ui.out.print(table)
    if not report["plugins"]:
        ui.out.print("No plugins found: is cvkit installed (pip install -e .)?")


SUMMARY_OVER = 30  # `cvkit list` shows more models than this as a count per plugin


def families(rows: list[dict]) -> list[dict]:
    """The models as one row per family (``family`` metadata, else the name): a zoo's thousands
    stay readable."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("family") or r["name"], []).append(r)
    return [{"family": family, "models": len(members), "plugins": sorted({r["plugin"] for r in members}),
             "example": members[0]["name"],
             "see": f"cvkit list models '{family}*'" if len(members) > 1 else f"cvkit list models {members[0]['name']}"}
            for family, members in sorted(groups.items())]


def render_families(rows: list[dict]) -> None:
    from rich.table import Table

    from cvkit import ui

    found = families(rows)
    table = Table(title=f"models: {len(rows)} in {len(found)} families", title_justify="left")
    for column in ("family", "models", "plugin", "for example", "to see them"):
        table.add_column(column, justify="right" if column == "models" else "left")
    for f in found:
        table.add_row(f["family"], str(f["models"]), ", ".join(f["plugins"]), f["example"], f["see"])
    ui.print_fitted(table, drop=("to see them", "plugin", "for example"))


def render_plugin_counts(rows: list[dict]) -> None:
    """``cvkit list`` with a model zoo installed: the models counted per plugin, with how to see them."""
    from rich.table import Table

    from cvkit import ui

    by_plugin: dict[str, list[dict]] = {}
    for r in rows:
        by_plugin.setdefault(r["plugin"], []).append(r)
    table = Table(title=f"models: {len(rows)} (cvkit list models --families counts them per family)",
                  title_justify="left")
    for column in ("plugin", "models", "families", "to see them"):
        table.add_column(column, justify="right" if column == "models" else "left")
    for plugin, members in sorted(by_plugin.items()):
        found = families(members)
        names = ", ".join(f["family"] for f in found[:4]) + (f", ... ({len(found)})" if len(found) > 4 else "")
        prefix = _common_prefix([r["name"] for r in members])
        see = f"cvkit list models '{prefix}*'" if prefix else "cvkit list models --families"
        table.add_row(plugin, str(len(members)), names, see if len(members) > 1 else f"cvkit list models {members[0]['name']}")
    ui.print_fitted(table, drop=("to see them", "families"))
    for r in (r for r in rows if r.get("conflict")):  # named, never hidden in a count
        ui.out.print(f"[red]{r['name']}: {r['help']} ({r['plugin']})[/]", soft_wrap=True)


def _common_prefix(names: list[str]) -> str:
    import os

    prefix = os.path.commonprefix(names)
    return prefix if len(prefix) >= 3 else ""


def render_entries(report: dict, *, summarise: bool = False) -> None:
    """One table per kind; with ``summarise`` (``cvkit list`` alone), a long list of models as
    counts per family."""
    from rich.markup import escape
    from rich.table import Table

    from cvkit import ui

    for name, rows in report.items():
        if summarise and name == "models" and len(rows) > SUMMARY_OVER:
            render_plugin_counts(rows)
            continue
        table = Table(title=name, title_justify="left")
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("plugin")
        if name == "models":
            table.add_column("input")
            table.add_column("transforms")
        table.add_column("help", overflow="fold")
        for r in rows:
            cells = [r["name"], r["plugin"]]
            if name == "models":
                cells += ["x".join(map(str, r["input_size"])) if "input_size" in r else "-",
                          r.get("default_transforms") or "-"]
            cells.append(f"[red]{escape(r['help'])}[/]" if r.get("conflict") else escape(r["help"]))
            table.add_row(*cells)
        if not rows:
            table.add_row(*(["(none)"] + [""] * (len(table.columns) - 1)))
        ui.print_fitted(table, drop=("transforms", "input", "plugin"))
