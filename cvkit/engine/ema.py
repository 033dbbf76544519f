"""``--ema DECAY``: an exponential moving average of the weights, kept beside the training weights.

After every optimizer step each floating-point tensor of the model's state (parameters and
buffers, BatchNorm statistics included) moves towards the training weights:
``average = decay * average + (1 - decay) * weights`` (integer buffers are copied). Validation,
``best.pt``, ``last.pt``'s ``model_state`` and so eval, predict and export use the average; the
training weights travel in the checkpoint's ``ema`` record, so ``--resume`` continues both exactly.
"""

from __future__ import annotations


class WeightAverage:
    """The engine's callback for ``--ema``: it averages on ``on_step_end``, swaps the average in
    for validation, and puts it in the checkpoints (``on_checkpoint``)."""

    def __init__(self, decay: float):
        self.decay = float(decay)
        self.average: dict | None = None
        self.updates = 0
        self.kept: dict | None = None  # the training weights while the average is swapped in

    def on_train_start(self, run) -> None:
        import torch

        state = run.model.state_dict()
        saved = (run.checkpoint or {}).get("ema") if run.checkpoint else None
        with torch.no_grad():
            if saved:  # a resumed run: its model was built from the training weights (setup)
                self.average = {k: v.to(state[k].device).clone() for k, v in run.checkpoint["model_state"].items()}
                self.updates = int(saved.get("updates", 0))
            else:
                self.average = {k: v.detach().clone() for k, v in state.items()}
        # the state's tensors share the model's storage and stay the same objects (optimizer steps and
        # the swaps below write into them), so the pairs are taken once, not per step
        floats = [k for k, v in state.items() if v.is_floating_point()]
        self._pairs = ([self.average[k] for k in floats], [state[k] for k in floats])
        self._others = [(self.average[k], v) for k, v in state.items() if not v.is_floating_point()]
        run.run_record["ema_decay"] = self.decay

    def on_step_end(self, run, step: int) -> None:
        import torch

        with torch.no_grad():
            torch._foreach_lerp_(*self._pairs, 1.0 - self.decay)
            for average, live in self._others:
                average.copy_(live)
        self.updates += 1

    def on_validation_start(self, run) -> None:
        self.kept = _copy(run.model.state_dict())
        _load(run.model, self.average)

    def on_validation_end(self, run) -> None:
        if self.kept is not None:
            _load(run.model, self.kept)
            self.kept = None

    def on_checkpoint(self, run, payload: dict) -> None:
        """``model_state`` becomes the average; the training weights go to ``ema.training_state``."""
        payload["ema"] = {"decay": self.decay, "updates": self.updates, "training_state": payload["model_state"]}
        payload["model_state"] = {k: v.detach().cpu().clone() for k, v in self.average.items()}
        payload["run"] = {**(payload.get("run") or {}), "weights": f"exponential moving average (decay {self.decay})"}


def training_state(checkpoint: dict) -> dict:
    """The weights training continues from: the training weights of an ``--ema`` run, else ``model_state``."""
    ema = checkpoint.get("ema")
    return ema["training_state"] if ema and ema.get("training_state") is not None else checkpoint["model_state"]


def _copy(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def _load(model, state: dict) -> None:
    import torch

    with torch.no_grad():
        live = model.state_dict()
        for k, v in state.items():
            live[k].copy_(v)
