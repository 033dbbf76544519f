"""Registries of named factories (models, transforms, losses, ...), filled by plugin hooks.

A registry holds factories, not built objects: nothing heavy runs until a command builds the thing
it needs. A name registered by two plugins is kept as a conflict: using it is an error that names
both plugins, so neither silently wins.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from cvkit.errors import PluginError, UsageError, CvkitError

# kind (singular, as users type it in --opt) -> registry name (plural, as in hooks and `cvkit list`)
KINDS = {
    "model": "models",
    "transform": "transforms",
    "loss": "losses",
    "optimizer": "optimizers",
    "scheduler": "schedulers",
    "dataset": "datasets",
    "callback": "callbacks",
}


AVAILABLE_NAMED = 12  # an unknown name's error lists the names up to this many, else counts them


@dataclass(frozen=True)
class Entry:
    """One registered factory and what its plugin said about it."""

    kind: str
    name: str
    build: Callable[..., Any]
    plugin: str
    help: str = ""
    meta: dict = field(default_factory=dict)

    def create(self, *args, options: dict | None = None, **kwargs):
        """Call the factory with ``kwargs`` and the user's extra ``options``.

        Options the factory does not accept are a usage error naming them; an exception inside the
        factory that is not a cvkit error is reported as the plugin's failure.
        """
        options = dict(options or {})
        _check_options(self, options, fixed=set(kwargs), positional=len(args))
        try:
            return self.build(*args, **kwargs, **options)
        except CvkitError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {self.plugin!r} failed in the factory of {self.kind} {self.name!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _check_options(entry: Entry, options: dict, fixed: set, positional: int = 0) -> None:
    if not options:
        return
    try:
        params = inspect.signature(entry.build).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        n for i, (n, p) in enumerate(params.items())
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and n not in fixed and i >= positional  # the first ``positional`` are given by position
    ]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise UsageError(
            f"--opt {entry.kind}.{unknown[0]}: {entry.kind} {entry.name!r} has no option "
            f"{unknown[0]!r} (it accepts: {', '.join(accepted) or 'none'})"
        )


def _check_model_meta(name: str, meta: dict) -> None:
    size = meta.get("input_size")
    if (not isinstance(size, (tuple, list)) or len(size) != 3
            or not all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"model {name!r}: input_size must be (channels, height, width), got {size!r}")
    for key in ("mean", "std"):
        value = meta.get(key)
        if not isinstance(value, (tuple, list)) or len(value) != size[0]:
            raise ValueError(f"model {name!r}: {key} must have one value per channel ({size[0]}), got {value!r}")
    cam_layer = meta.get("cam_layer")
    if cam_layer is not None and (not isinstance(cam_layer, str) or not cam_layer):
        raise ValueError(f"model {name!r}: cam_layer must name a module (a dotted path), got {cam_layer!r}")
    meta["input_size"] = tuple(size)
    meta["mean"] = tuple(float(v) for v in meta["mean"])
    meta["std"] = tuple(float(v) for v in meta["std"])


_META_CHECKS = {"models": _check_model_meta}


def make_entry(registry_name: str, plugin: str, name, build, help: str = "", **meta) -> Entry:
    """Validate one ``register(...)`` call; raises ValueError/TypeError on a malformed call."""
    kind = next(k for k, v in KINDS.items() if v == registry_name)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{kind} names must be non-empty strings, got {name!r}")
    if not callable(build):
        raise TypeError(f"{kind} {name!r}: build must be callable, got {build!r}")
    check = _META_CHECKS.get(registry_name)
    if check:
        check(name, meta)
    return Entry(kind=kind, name=name, build=build, plugin=plugin, help=str(help or ""), meta=meta)


class Registry:
    """The entries of one kind, by name."""

    def __init__(self, name: str):
        self.name = name  # plural: "models"
        self.kind = next(k for k, v in KINDS.items() if v == name)
        self._entries: dict[str, Entry] = {}
        self.conflicts: dict[str, list[Entry]] = {}

    def add(self, entry: Entry) -> None:
        if entry.name in self.conflicts:
            self.conflicts[entry.name].append(entry)
        elif entry.name in self._entries:
            self.conflicts[entry.name] = [self._entries.pop(entry.name), entry]
        else:
            self._entries[entry.name] = entry

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self.conflicts))

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self.conflicts

    def get(self, name: str, option: str | None = None) -> Entry:
        """The entry called ``name``; a clear error if it is unknown or registered twice."""
        where = f"{option}: " if option else ""
        if name in self.conflicts:
            plugins = " and ".join(repr(e.plugin) for e in self.conflicts[name])
            raise PluginError(
                f"{where}{self.kind} {name!r} is registered by two plugins, {plugins}; "
                f"uninstall one or skip it with CVKIT_DISABLE_PLUGINS=NAME"
            )
        if name not in self._entries:
            names = self.names()
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            available = (f"Available: {', '.join(names) or 'none'}" if len(names) <= AVAILABLE_NAMED
                         else f"{len(names)} {self.name} available")  # a model zoo: counted, not named
            raise UsageError(f"{where}unknown {self.kind} {name!r}.{hint} {available} (see `cvkit list {self.name}`)")
        return self._entries[name]
