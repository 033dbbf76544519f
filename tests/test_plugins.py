"""Plugin loading through real entry points: isolation of broken plugins, conflicts, disabling.

Every third-party plugin here is a throw-away distribution installed with ``fake_dist``, so the
whole path (entry-point discovery, import, pluggy validation, hook calls) is the real one.
"""

from __future__ import annotations

import json

import pytest

BUILTIN_PLUGINS = {"net", "resnet18", "transforms", "losses", "optimizers", "schedulers", "datasets"}
BUILTIN_MODELS = {"net", "resnet18-finetune", "resnet18-frozen"}

GOOD = """
    import cvkit

    def build(num_classes, weights=None):
        raise RuntimeError("not built in these tests")

    @cvkit.hookimpl
    def register_models(register):
        register("good-model", build, input_size=(1, 8, 8), mean=(0.5,), std=(0.5,), help="fine")
"""

# name -> (module source, stage, words the error must contain, names that must not be registered)
BROKEN = {
    "import-error": ("""
        import cvkit
        import cvkit_no_such_dependency_xyz
    """, "import", ["ModuleNotFoundError", "cvkit_no_such_dependency_xyz"], []),
    "syntax-error": ("""
        import cvkit

        def broken(:
            pass
    """, "import", ["SyntaxError"], []),
    "misspelt-hook": ("""
        import cvkit

        @cvkit.hookimpl
        def register_model(register):
            register("typo-model", lambda num_classes, weights=None: None,
                     input_size=(1, 8, 8), mean=(0.5,), std=(0.5,))
    """, "validation", ["register_model", "unknown hook"], ["typo-model"]),
    "raises-in-hook": ("""
        import cvkit

        @cvkit.hookimpl
        def register_models(register):
            register("half-model", lambda num_classes, weights=None: None,
                     input_size=(1, 8, 8), mean=(0.5,), std=(0.5,))

        @cvkit.hookimpl
        def register_losses(register):
            register("half-loss", lambda: None)
            raise ValueError("boom in register_losses")
    """, "register_losses", ["ValueError", "boom in register_losses"], ["half-model", "half-loss"]),
    "raises-in-commands": ("""
        import cvkit

        @cvkit.hookimpl
        def register_models(register):
            register("cmd-model", lambda num_classes, weights=None: None,
                     input_size=(1, 8, 8), mean=(0.5,), std=(0.5,))

        @cvkit.hookimpl
        def register_commands(app):
            @app.command("hello-bad")
            def hello():
                print("hello from a broken plugin")
            raise KeyError("boom in register_commands")
    """, "register_commands", ["KeyError", "boom in register_commands"], ["cmd-model"]),
}


@pytest.fixture
def with_broken(fake_dist):
    """Install the good plugin and one broken plugin ``bad`` from distribution ``cvkit-bad``."""

    def install(case: str):
        source = BROKEN[case][0]
        fake_dist("cvkit-good", {"cvkit_good_plugin": GOOD}, {"good": "cvkit_good_plugin"})
        fake_dist("cvkit-bad", {"cvkit_bad_plugin": source}, {"bad": "cvkit_bad_plugin"}, version="2.3")
        return BROKEN[case]

    return install


def _plugins(cli) -> dict:
    r = cli("plugins", "--json")
    assert r.code == 0, r.err
    return {p["name"]: p for p in json.loads(r.out)["plugins"]}


def _model_names(cli) -> set[str]:
    r = cli("list", "models", "--json")
    assert r.code == 0, r.err
    return {m["name"] for m in json.loads(r.out)["models"]}


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_plugin_is_isolated_and_reported(cli, with_broken, case):
    _, stage, words, not_registered = with_broken(case)

    r = cli("list", "models")
    assert r.code == 0, r.err
    lines = _warnings(r.err)
    assert len(lines) == 1, r.err  # one line, not a traceback
    line = lines[0]
    assert line.startswith("cvkit: warning: plugin 'bad' (distribution cvkit-bad 2.3)"), line
    assert f"failed in {stage}" in line
    for word in words:
        assert word in line, (word, line)
    assert "Traceback" not in r.err
    assert "net" in r.out and "good-model" in r.out

    names = _model_names(cli)
    assert BUILTIN_MODELS | {"good-model"} <= names
    assert not names & set(not_registered)

    info = _plugins(cli)["bad"]
    assert info["status"] == "failed"
    assert info["stage"] == stage
    assert info["distribution"] == "cvkit-bad" and info["version"] == "2.3"
    assert all(word in info["error"] for word in words), info["error"]
    assert info["registered"] == {}
    good = _plugins(cli)["good"]
    assert good["status"] == "loaded" and good["registered"] == {"models": ["good-model"]}


@pytest.mark.parametrize("case", list(BROKEN))
def test_strict_mode_makes_a_broken_plugin_an_error(cli, with_broken, monkeypatch, case):
    _, stage, words, _ = with_broken(case)
    monkeypatch.setenv("CVKIT_STRICT_PLUGINS", "1")
    r = cli("list", "models")
    assert r.code == 5
    errors = [line for line in r.err.splitlines() if line.startswith("cvkit: error:")]
    assert len(errors) == 1, r.err
    assert "plugin 'bad'" in errors[0] and "cvkit-bad" in errors[0] and "CVKIT_STRICT_PLUGINS" in errors[0]
    assert words[0] in errors[0]
    assert "Traceback" not in r.err
    assert r.out == ""


def test_plugins_human_table_shows_the_failure(cli, with_broken, monkeypatch):
    from cvkit import ui

    monkeypatch.setattr(ui.out, "width", 250)  # no folding inside the table's cells
    with_broken("raises-in-hook")
    r = cli("plugins")
    assert r.code == 0
    assert "failed in register_losses" in r.out
    assert "cvkit-bad" in r.out and "good-model" in r.out


def test_failed_register_commands_removes_its_commands(cli, with_broken, fake_dist):
    with_broken("raises-in-commands")
    fake_dist("cvkit-cmd", {"cvkit_cmd_plugin": """
        import cvkit

        @cvkit.hookimpl
        def register_commands(app):
            @app.command("hello-good")
            def hello():
                print("hello from a good plugin")
    """}, {"cmd": "cvkit_cmd_plugin"})
    r = cli("hello-bad")
    assert r.code == 2
    assert "hello from a broken plugin" not in r.out
    assert "no such command 'hello-bad'" in r.err and len(r.err.strip().splitlines()) == 2  # the warning, then one line
    r = cli("hello-good")
    assert r.code == 0, r.err
    assert "hello from a good plugin" in r.out
    assert _plugins(cli)["cmd"]["registered"] == {"commands": ["hello-good"]}
    r = cli("--help")
    assert "hello-good" in r.out and "hello-bad" not in r.out


def test_plugin_command_runs(cli, fake_dist):
    fake_dist("cvkit-cmd", {"cvkit_cmd_plugin": """
        import cvkit

        @cvkit.hookimpl
        def register_commands(app):
            @app.command("shout")
            def shout(word: str):
                print(word.upper())
    """}, {"cmd": "cvkit_cmd_plugin"})
    r = cli("shout", "hey")
    assert (r.code, r.out.strip()) == (0, "HEY"), r.err


@pytest.fixture
def with_dup(fake_dist):
    for letter in "ab":
        fake_dist(f"cvkit-dup-{letter}", {f"cvkit_dup_{letter}": f"""
            import cvkit

            def build(num_classes, weights=None):
                raise RuntimeError("never built: the name is in conflict")

            @cvkit.hookimpl
            def register_models(register):
                register("dup", build, input_size=(1, 8, 8), mean=(0.5,), std=(0.5,), help="from {letter}")
                register("only-{letter}", build, input_size=(1, 8, 8), mean=(0.5,), std=(0.5,))
        """}, {f"dup{letter}": f"cvkit_dup_{letter}"})


def test_conflicting_names_are_marked_in_list(cli, with_dup):
    r = cli("list", "models", "--json")
    assert r.code == 0, r.err
    rows = {m["name"]: m for m in json.loads(r.out)["models"]}
    assert rows["dup"]["conflict"] is True
    assert set(rows["dup"]["plugin"].split(", ")) == {"dupa", "dupb"}
    assert "CONFLICT" in rows["dup"]["help"]
    assert {"only-a", "only-b"} | BUILTIN_MODELS <= set(rows)
    lines = _warnings(r.err)
    assert len(lines) == 1, r.err
    assert "model 'dup' is registered by two plugins" in lines[0]
    assert "'dupa'" in lines[0] and "'dupb'" in lines[0]

    r = cli("list")
    assert r.code == 0
    assert "CONFLICT" in r.out and "dup" in r.out


def test_using_a_conflicting_name_is_exit_5_naming_both(cli, with_dup):
    r = cli("inspect-grad", "--model", "dup", "--json")
    assert r.code == 5
    errors = [line for line in r.err.splitlines() if line.startswith("cvkit: error:")]
    assert len(errors) == 1, r.err
    assert "'dup'" in errors[0] and "'dupa'" in errors[0] and "'dupb'" in errors[0]
    assert "CVKIT_DISABLE_PLUGINS" in errors[0]
    assert r.out == ""


def test_builtins_keep_working_next_to_a_conflict(cli, with_dup):
    r = cli("inspect-grad", "--model", "net", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["model"]["name"] == "net"


def test_conflict_is_an_error_in_strict_mode(cli, with_dup, monkeypatch):
    monkeypatch.setenv("CVKIT_STRICT_PLUGINS", "1")
    r = cli("list", "models")
    assert r.code == 5
    assert "'dup'" in r.err and "CVKIT_STRICT_PLUGINS" in r.err


def test_disabling_one_of_two_resolves_the_conflict(cli, with_dup, monkeypatch):
    monkeypatch.setenv("CVKIT_DISABLE_PLUGINS", "dupb")
    r = cli("list", "models", "--json")
    assert r.code == 0 and r.err == ""
    rows = {m["name"]: m for m in json.loads(r.out)["models"]}
    assert rows["dup"]["plugin"] == "dupa" and "conflict" not in rows["dup"]
    assert "only-b" not in rows


@pytest.mark.parametrize("value", ["bad", "cvkit-bad", " other , bad "])
def test_disable_plugins_skips_by_plugin_or_distribution_name(cli, with_broken, monkeypatch, value):
    with_broken("raises-in-hook")
    monkeypatch.setenv("CVKIT_DISABLE_PLUGINS", value)
    r = cli("list", "models")
    assert r.code == 0 and r.err == ""  # a disabled plugin is not imported, so nothing fails
    info = _plugins(cli)
    assert info["bad"]["status"] == "disabled"
    assert info["bad"]["hooks"] == [] and info["bad"]["error"] is None
    assert info["good"]["status"] == "loaded"


def test_disabled_plugin_is_not_imported(cli, fake_dist, monkeypatch, tmp_path):
    marker = tmp_path / "imported"
    fake_dist("cvkit-side", {"cvkit_side_effect": f"""
        import pathlib
        pathlib.Path({str(marker)!r}).touch()
    """}, {"side": "cvkit_side_effect"})
    monkeypatch.setenv("CVKIT_DISABLE_PLUGINS", "side")
    assert cli("list", "models").code == 0
    assert not marker.exists()
    monkeypatch.delenv("CVKIT_DISABLE_PLUGINS")
    assert cli("list", "models").code == 0
    assert marker.exists()


def test_disable_a_builtin_plugin(cli, monkeypatch):
    monkeypatch.setenv("CVKIT_DISABLE_PLUGINS", "resnet18")
    names = _model_names(cli)
    assert "net" in names and not names & {"resnet18-finetune", "resnet18-frozen"}
    assert _plugins(cli)["resnet18"]["status"] == "disabled"


def test_disable_autoload_keeps_only_builtins(cli, with_broken, with_dup, monkeypatch):
    with_broken("syntax-error")
    monkeypatch.setenv("CVKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    r = cli("list", "models", "--json")
    assert r.code == 0 and r.err == ""
    names = {m["name"] for m in json.loads(r.out)["models"]}
    assert BUILTIN_MODELS <= names
    assert not names & {"good-model", "dup", "only-a", "only-b"}
    info = _plugins(cli)
    for name in ("good", "bad", "dupa", "dupb"):
        assert info[name]["status"] == "disabled", name
    for name in BUILTIN_PLUGINS:
        assert info[name]["status"] == "loaded", name


def test_builtin_plugins_come_from_the_cvkit_entry_point_group(cli):
    r = cli("plugins", "--json")
    assert r.code == 0 and r.err == ""
    report = json.loads(r.out)
    assert report["problems"] == []
    plugins = {p["name"]: p for p in report["plugins"]}
    assert BUILTIN_PLUGINS <= set(plugins)
    for name in BUILTIN_PLUGINS:
        p = plugins[name]
        assert p["distribution"] == "cvkit" and p["builtin"] is True, p
        assert p["module"].startswith("cvkit_plugins."), p
        assert p["status"] == "loaded" and p["stage"] is None
    assert plugins["net"]["hooks"] == ["register_models"]
    assert plugins["net"]["registered"] == {"models": ["net"]}
    assert set(plugins["resnet18"]["registered"]["models"]) == {"resnet18-finetune", "resnet18-frozen"}
    assert set(plugins["losses"]["registered"]["losses"]) == {"cross-entropy", "mse", "label-smoothing"}
    assert set(plugins["optimizers"]["registered"]["optimizers"]) == {"sgd", "adam", "adamw"}
    assert set(plugins["schedulers"]["registered"]["schedulers"]) == {"step", "cosine", "onecycle", "none"}
    assert set(plugins["transforms"]["registered"]["transforms"]) == {"chapter", "plain"}
    assert plugins["datasets"]["registered"]["datasets"] == ["imagefolder"]
    # built-ins are listed before third-party plugins
    order = [p["builtin"] for p in report["plugins"]]
    assert order == sorted(order, reverse=True)


def test_third_party_plugin_metadata(cli, fake_dist):
    fake_dist("cvkit-good", {"cvkit_good_plugin": GOOD}, {"good": "cvkit_good_plugin"}, version="0.7")
    p = _plugins(cli)["good"]
    assert p == {
        "name": "good", "distribution": "cvkit-good", "version": "0.7", "module": "cvkit_good_plugin",
        "builtin": False, "status": "loaded", "stage": None, "error": None,
        "hooks": ["register_models"], "registered": {"models": ["good-model"]},
    }


def test_same_entry_point_name_in_two_distributions_is_kept_apart(cli, fake_dist):
    fake_dist("cvkit-one", {"cvkit_one": GOOD}, {"extra": "cvkit_one"})
    fake_dist("cvkit-two", {"cvkit_two": GOOD.replace("good-model", "other-model")}, {"extra": "cvkit_two"})
    plugins = _plugins(cli)
    extras = {name: p for name, p in plugins.items() if name.endswith("extra")}
    assert len(extras) == 2 and all(p["status"] == "loaded" for p in extras.values())
    assert {p["distribution"] for p in extras.values()} == {"cvkit-one", "cvkit-two"}
    assert {"good-model", "other-model"} <= _model_names(cli)


def test_a_bad_hook_signature_fails_validation(cli, fake_dist):
    fake_dist("cvkit-sig", {"cvkit_sig": """
        import cvkit

        @cvkit.hookimpl
        def register_models(register, extra):
            pass
    """}, {"sig": "cvkit_sig"})
    info = _plugins(cli)["sig"]
    assert info["status"] == "failed" and info["stage"] == "validation"
    assert "extra" in info["error"] and "\n" not in info["error"]
    assert BUILTIN_MODELS <= _model_names(cli)


def test_dropping_a_plugin_resolves_its_conflicts(cli, fake_dist):
    """A plugin whose register_commands fails loses its models, so a name it shared is usable again."""
    fake_dist("cvkit-flaky", {"cvkit_flaky": """
        import cvkit

        @cvkit.hookimpl
        def register_models(register):
            register("shared", lambda num_classes, weights=None: None,
                     input_size=(1, 8, 8), mean=(0.5,), std=(0.5,), help="from flaky")

        @cvkit.hookimpl
        def register_commands(app):
            raise RuntimeError("no commands today")
    """}, {"flaky": "cvkit_flaky"})
    fake_dist("cvkit-steady", {"cvkit_steady": """
        import cvkit

        @cvkit.hookimpl
        def register_models(register):
            register("shared", lambda num_classes, weights=None: None,
                     input_size=(1, 8, 8), mean=(0.5,), std=(0.5,), help="from steady")
    """}, {"steady": "cvkit_steady"})
    r = cli("list", "models", "--json")
    assert r.code == 0
    rows = {m["name"]: m for m in json.loads(r.out)["models"]}
    assert rows["shared"]["plugin"] == "steady" and "conflict" not in rows["shared"]
    lines = _warnings(r.err)
    assert len(lines) == 1 and "plugin 'flaky'" in lines[0] and "no commands today" in lines[0]


def test_plugin_command_typer_cannot_build_is_skipped(cli, fake_dist):
    # typer builds commands lazily; an annotation it cannot resolve must not break every command
    fake_dist("cvkit-lazy", {"cvkit_lazy_plugin": """
        from __future__ import annotations
        import cvkit

        @cvkit.hookimpl
        def register_commands(app):
            from typing import Annotated
            import typer

            @app.command("lazy")
            def lazy(n: Annotated[int, typer.Option()] = 1):
                print(n)
    """}, {"lazy": "cvkit_lazy_plugin"})
    r = cli("list", "models", "--json")
    assert r.code == 0, r.err
    assert "plugin 'lazy' (distribution cvkit-lazy 1.0) failed in register_commands" in r.err
    assert _plugins(cli)["lazy"]["status"] == "failed"
    assert cli("lazy").code == 2


def test_plugin_command_cannot_replace_a_builtin_command(cli, fake_dist):
    fake_dist("cvkit-shadow", {"cvkit_shadow_plugin": """
        import cvkit

        @cvkit.hookimpl
        def register_commands(app):
            @app.command("list")
            def hijack():
                print("hijacked")
    """}, {"shadow": "cvkit_shadow_plugin"})
    r = cli("list", "models", "--json")
    assert r.code == 0, r.err
    assert "hijacked" not in r.out
    assert "command 'list' already exists" in r.err
    assert _plugins(cli)["shadow"]["stage"] == "register_commands"


def test_strict_mode_reports_the_problem_once(cli, with_broken, monkeypatch):
    with_broken("import-error")
    monkeypatch.setenv("CVKIT_STRICT_PLUGINS", "1")
    r = cli("list")
    assert r.code == 5
    assert len(_warnings(r.err)) == 1, r.err


def test_verbose_after_the_command_shows_the_traceback(cli):
    r = cli("inspect-grad", "--model", "nett", "--verbose")
    assert r.code == 2
    assert "Traceback" in r.err and "unknown model 'nett'" in r.err
