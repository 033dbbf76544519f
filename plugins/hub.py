"""torchvision's pretrained weights for the built-in models: downloaded once into torch's cache,
one clear line when that cannot be done (offline). Imports torch only inside its functions."""

from cvkit.errors import CheckpointError


class _HubMessages:
    """torch.hub's output on its way to stderr, without its ``Downloading: "URL" to PATH`` line:
    offline, cvkit's error is then the only line; a download in progress still shows its bar."""

    def __init__(self, target):
        self.target, self.downloaded = target, False

    def write(self, text: str) -> int:
        if text.startswith("Downloading: "):
            self.downloaded = True
            return len(text)
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()


def imagenet_state_dict(weights, model: str) -> dict:
    """The state dict of a torchvision ``weights`` enum member (e.g. ``ResNet18_Weights.IMAGENET1K_V1``)."""
    import contextlib
    import sys

    hub = _HubMessages(sys.stderr)
    try:
        # stdout stays for results (--json) only
        with contextlib.redirect_stdout(hub), contextlib.redirect_stderr(hub):
            state = weights.get_state_dict(progress=True, check_hash=True)
        if hub.downloaded:
            from cvkit import ui

            ui.err.print(f"cvkit: downloaded {model}'s ImageNet weights ({weights.url}) into torch's cache",
                         markup=False, highlight=False, soft_wrap=True)
        return state
    except (OSError, RuntimeError) as exc:  # URLError, socket errors, hash mismatch
        raise CheckpointError(
            f"--weights imagenet: cannot download {model}'s ImageNet weights from {weights.url} "
            f"({type(exc).__name__}: {exc}); offline, use --weights none (random initialisation) "
            f"or --weights PATH (a local state dict or cvkit checkpoint)") from None
