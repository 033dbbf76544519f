"""`cvkit train`: options from defaults, a YAML file and the command line, then the training loop."""

from __future__ import annotations

from cvkit.config import FIELDS, make_config, read_config_file
from cvkit.data import parse_workers
from cvkit.errors import CheckpointError


def train_command(*, cli_values: dict, config_file: str | None = None, resume: str | None = None,
                  json: bool = False, plugins=None) -> dict:
    """Merge the options and train. With ``resume``, the checkpoint's own options are the base."""
    from cvkit.train import fit

    cli_values = dict(cli_values)
    if "workers" in cli_values:
        cli_values["workers"] = parse_workers(cli_values["workers"])
    base = read_config_file(config_file) if config_file else {}
    if resume:
        from cvkit.checkpoint import find_checkpoint, load_checkpoint

        saved = load_checkpoint(find_checkpoint(resume, option="--resume", name="last.pt"), option="--resume")
        saved_config = {k: v for k, v in (saved.get("config") or {}).items() if k in FIELDS and k != "out"}
        saved_config.setdefault("recipe", "chapter")  # a run from before recipes: its options are the chapter's
        given_model = cli_values.get("model") or base.get("model")
        if given_model and given_model != saved_config.get("model"):
            raise CheckpointError(f"--resume {resume}: the run trained model {saved_config.get('model')!r}, "
                             f"not {given_model!r}")
        base = {**saved_config, **base}
    config = make_config(base, cli_values)
    return fit(config, resume=resume, plugins=plugins, show_progress=not json)
