"""cvkit's built-in plugins.

Installed as the package ``cvkit_plugins`` and registered through the ``cvkit`` entry-point group,
exactly like a third party's plugin; they use only cvkit's public API. The modules named in the
entry points import no torch at module level; the models' torch code lives in modules of its own
that the factories import when they run.
"""
