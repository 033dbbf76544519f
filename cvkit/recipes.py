"""Recipes: named sets of training defaults. An option the user gives (command line or config file)
always wins; the recipe fills in the rest. ``cvkit train --recipe chapter`` is the chapter's own
recipe; ``default`` is what cvkit uses unless told otherwise. docs/usage.md ("Choosing a recipe")
gives the measured effect of each part.
"""

from __future__ import annotations

RECIPES: dict[str, dict] = {
    # the chapter: SGD (momentum 0.9) at lr 0.001, StepLR (x0.1 every 7 epochs), plain cross-entropy
    "chapter": {"optimizer": "sgd", "lr": 0.001, "scheduler": "step", "loss": "cross-entropy",
                "warmup_epochs": 0.0, "options": {}},
    # short runs from scratch and fine-tuning alike: AdamW with decoupled weight decay, a linear
    # warm-up then a cosine decay stepped every optimizer step, label smoothing 0.1
    "default": {"optimizer": "adamw", "lr": 0.001, "scheduler": "cosine", "loss": "cross-entropy",
                "warmup_epochs": 0.5,
                "options": {"optimizer": {"weight_decay": 0.05}, "loss": {"label_smoothing": 0.1}}},
}
RECIPE_HELP = ("chapter: SGD lr 0.001, StepLR, cross-entropy (the chapter's); default: AdamW lr 0.001 "
               "weight decay 0.05, warm-up then cosine per step, label smoothing 0.1")


def apply_recipe(values: dict, given_options: dict) -> dict:
    """``values`` (merged options) with the recipe's defaults for what was not given. A recipe's
    ``--opt`` defaults apply only where the user kept the recipe's optimizer / loss / scheduler."""
    from cvkit.errors import UsageError

    name = values.get("recipe") or "default"
    if name not in RECIPES:
        raise UsageError(f"--recipe {name!r}: unknown recipe (one of: {', '.join(RECIPES)})")
    recipe = RECIPES[name]
    result = dict(values)
    for key, value in recipe.items():
        if key != "options" and result.get(key) is None:
            result[key] = value
    if values.get("warmup_epochs") is None and result["scheduler"] != recipe["scheduler"]:
        result["warmup_epochs"] = 0.0  # the recipe's warm-up belongs to its own schedule
    options = {kind: dict(opts) for kind, opts in (given_options or {}).items()}
    for kind, defaults in recipe["options"].items():
        if result.get(kind) != recipe.get(kind):  # the user chose another optimizer / loss
            continue
        for key, value in defaults.items():
            options.setdefault(kind, {}).setdefault(key, value)
    result["options"] = options
    return result
