"""Finding, loading and isolating plugins.

Every plugin, the built-in ones included, comes from the ``cvkit`` entry-point group and is loaded
one entry point at a time. A plugin that fails to import, fails pluggy's validation (a misspelt hook
name), or raises inside a hook is recorded as failed, reported in one line, and skipped: the other
plugins and every command keep working.

Environment variables:

* ``CVKIT_DISABLE_PLUGINS=a,b``: skip these plugins (entry-point or distribution names).
* ``CVKIT_DISABLE_PLUGIN_AUTOLOAD=1``: skip every plugin that does not ship with cvkit.
* ``CVKIT_STRICT_PLUGINS=1``: a failed plugin or a name registered twice is an error (exit 5).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from cvkit import hookspecs
from cvkit.errors import PluginError
from cvkit.registry import KINDS, Registry, make_entry

GROUP = "cvkit"
BUILTIN_DISTRIBUTION = "cvkit"


@dataclass
class PluginInfo:
    """What cvkit knows about one entry point."""

    name: str
    distribution: str
    version: str
    value: str  # the entry point's target, e.g. "cvkit_tinymlp"
    status: str = "loaded"  # loaded | failed | disabled
    stage: str = ""  # where it failed: import | validation | <hook name>
    error: str = ""
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    def problem(self) -> str:
        """The one-line report of a failed plugin."""
        return (f"plugin {self.name!r} (distribution {self.distribution} {self.version}) "
                f"failed in {self.stage}: {self.error}")

    def as_dict(self) -> dict:
        return {
            "name": self.name, "distribution": self.distribution, "version": self.version,
            "module": self.value, "builtin": self.builtin, "status": self.status,
            "stage": self.stage or None, "error": self.error or None,
            "hooks": self.hooks, "registered": self.registered,
        }


class Plugins:
    """The loaded plugins, their pluggy manager and the registries they filled."""

    def __init__(self):
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        self.registries: dict[str, Registry] = {name: Registry(name) for name in KINDS.values()}

    def __getitem__(self, registry_name: str) -> Registry:
        return self.registries[registry_name]

    @property
    def failed(self) -> list[PluginInfo]:
        return [p for p in self.infos if p.status == "failed"]

    def problems(self) -> list[str]:
        """One line per failed plugin and per name registered twice."""
        lines = [p.problem() for p in self.failed]
        for reg in self.registries.values():
            for name, entries in reg.conflicts.items():
                plugins = " and ".join(repr(e.plugin) for e in entries)
                lines.append(f"{reg.kind} {name!r} is registered by two plugins, {plugins}: "
                             f"it cannot be used until one is removed or disabled")
        return lines

    def loaded(self) -> list[tuple[PluginInfo, object]]:
        return [(info, self.pm.get_plugin(info.name)) for info in self.infos if info.status == "loaded"]

    def _fail(self, info: PluginInfo, stage: str, exc: BaseException) -> None:
        info.status, info.stage = "failed", stage
        # One line, but all of it: pluggy puts what is wrong on the lines after the first.
        error = " ".join(line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip())
        info.error = error if len(error) <= 400 else error[:399] + "…"
        info.registered = {}
        plugin = self.pm.get_plugin(info.name)
        if plugin is not None:
            self.pm.unregister(plugin, name=info.name)

    def add(self, info: PluginInfo, plugin: object) -> None:
        """Register one plugin object with pluggy, validating it in isolation."""
        self.infos.append(info)
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # pluggy.PluginValidationError: bad signature, ...
            self._fail(info, "validation", exc)
            return
        # What pm.check_pending() checks, for this plugin alone: a hook name with no spec is a typo.
        for caller in self.pm.get_hookcallers(plugin) or []:
            if caller.spec is None:
                impl = next(i for i in caller.get_hookimpls() if i.plugin is plugin)
                if not impl.optionalhook:
                    known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("register_")))
                    self._fail(info, "validation", pluggy.PluginValidationError(
                        plugin, f"unknown hook {caller.name!r} (known hooks: {known})"))
                    return
        info.hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])

    def fill_registries(self) -> None:
        """Call every plugin's register_* hooks, one plugin at a time.

        A plugin's registrations are kept only if all its hooks succeed.
        """
        for info, plugin in self.loaded():
            staged = []
            try:
                for registry_name in KINDS.values():
                    hook = f"register_{registry_name}"
                    impl = _impl_of(self.pm, hook, plugin)
                    if impl is None:
                        continue
                    stage = hook

                    def register(name, build, help="", _reg=registry_name, **meta):
                        staged.append(make_entry(_reg, info.name, name, build, help=help, **meta))

                    _call(impl, register=register)
            except Exception as exc:
                self._fail(info, stage, exc)
                continue
            for entry in staged:
                self.registries[KINDS[entry.kind]].add(entry)
                info.registered.setdefault(KINDS[entry.kind], []).append(entry.name)

    def add_commands(self, app) -> None:
        """Let plugins add commands to the typer app.

        A plugin whose hook raises, whose command typer cannot build, or whose command name is
        already taken has its commands removed and is skipped: one plugin never breaks the CLI.
        """
        import typer.main

        for info, plugin in self.loaded():
            impl = _impl_of(self.pm, "register_commands", plugin)
            if impl is None:
                continue
            taken = set(_command_names(app))
            before = (len(app.registered_commands), len(app.registered_groups))
            try:
                _call(impl, app=app)
                added = _command_names(app, *before)
                clash = next((n for n in added if n in taken or added.count(n) > 1), None)
                if clash:
                    raise ValueError(f"command {clash!r} already exists")
                typer.main.get_command(app)  # typer builds commands lazily: build now, inside the guard
            except Exception as exc:
                del app.registered_commands[before[0]:]
                del app.registered_groups[before[1]:]
                self._fail(info, "register_commands", exc)
                for reg in self.registries.values():  # its models etc. go too: the plugin is skipped
                    _drop_plugin(reg, info.name)
                continue
            if added:
                info.registered["commands"] = added


def _command_names(app, commands_from: int = 0, groups_from: int = 0) -> list[str]:
    names = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands[commands_from:]]
    return names + [g.name for g in app.registered_groups[groups_from:]]


def _drop_plugin(reg: Registry, plugin_name: str) -> None:
    for name in [e.name for e in reg.entries() if e.plugin == plugin_name]:
        del reg._entries[name]
    for name, entries in list(reg.conflicts.items()):
        rest = [e for e in entries if e.plugin != plugin_name]
        if len(rest) == len(entries):
            continue
        del reg.conflicts[name]
        for e in rest:
            reg.add(e)


def _impl_of(pm, hook_name: str, plugin):
    caller = getattr(pm.hook, hook_name, None)
    if caller is None:
        return None
    return next((i for i in caller.get_hookimpls() if i.plugin is plugin), None)


def _call(impl, **kwargs):
    # Hooks are called with keyword arguments; an implementation may take fewer than its spec.
    return impl.function(**{name: kwargs[name] for name in impl.argnames})


def _env_list(value: str | None) -> set[str]:
    return {v.strip() for v in (value or "").split(",") if v.strip()}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def discover(env=None) -> list[tuple[PluginInfo, metadata.EntryPoint | None]]:
    """The ``cvkit`` entry points of installed distributions, without importing them."""
    env = os.environ if env is None else env
    disabled = _env_list(env.get("CVKIT_DISABLE_PLUGINS"))
    builtin_only = _truthy(env.get("CVKIT_DISABLE_PLUGIN_AUTOLOAD"))
    found, seen, names = [], set(), set()
    for ep in sorted(metadata.entry_points(group=GROUP),
                     key=lambda e: (e.dist.name != BUILTIN_DISTRIBUTION if e.dist else True, e.name)):
        dist = ep.dist.name if ep.dist else "unknown"
        version = ep.dist.version if ep.dist else "?"
        key = (dist, ep.name, ep.value)
        if key in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(key)
        name = ep.name if ep.name not in names else f"{dist}:{ep.name}"
        names.add(name)
        info = PluginInfo(name=name, distribution=dist, version=version, value=ep.value)
        if (ep.name in disabled or dist in disabled
                or (builtin_only and dist != BUILTIN_DISTRIBUTION)):
            info.status = "disabled"
            found.append((info, None))
        else:
            found.append((info, ep))
    return found


def load_plugins(env=None) -> Plugins:
    """Import and register every enabled plugin, then fill the registries."""
    env = os.environ if env is None else env
    plugins = Plugins()
    for info, ep in discover(env):
        if ep is None:
            plugins.infos.append(info)
            continue
        try:
            module = ep.load()
        except Exception as exc:  # ImportError, SyntaxError, anything at import time
            plugins.infos.append(info)
            plugins._fail(info, "import", exc)
            continue
        plugins.add(info, module)
    plugins.fill_registries()
    return plugins


def strict(env=None) -> bool:
    env = os.environ if env is None else env
    return _truthy(env.get("CVKIT_STRICT_PLUGINS"))


def check_strict(plugins: Plugins, env=None) -> None:
    """In strict mode, the first plugin problem is an error."""
    problems = plugins.problems()
    if problems and strict(env):
        raise PluginError(f"{problems[0]} (CVKIT_STRICT_PLUGINS is set)")


_current: Plugins | None = None


def get_plugins() -> Plugins:
    """The plugins of this process, loaded once."""
    global _current
    if _current is None:
        _current = load_plugins()
    return _current


def set_plugins(plugins: Plugins | None) -> None:
    """Replace (or with None, forget) the plugins of this process; for tests and embedding."""
    global _current
    _current = plugins
