"""Distributed data-parallel training on torchrun's engine (``torch.distributed`` +
DistributedDataParallel); nothing home-made beyond choosing the backend and reducing metrics.

``torchrun --nproc-per-node N -m cvkit train DATA ...`` starts N processes with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous in their environment; :func:`setup` reads them and
joins the process group (nccl on CUDA, gloo on the CPU). ``cvkit train --nproc N`` runs exactly that
torchrun command (:func:`torchrun_command`). See docs/distributed.md.

Rules the training loop follows (cvkit/train.py):

- ``--batch-size`` is the global batch: each of the N processes takes ``batch // N`` images a step;
- each process trains on its shard (``DistributedSampler``, ``set_epoch`` every epoch) and
  validates on a disjoint shard (:class:`ShardSampler`, no padding), and the sums behind loss,
  accuracy and the confusion matrix are added up across processes (:func:`reduce_phase`), so the
  numbers are those of the whole validation set, every sample counted once;
- one small all-reduce per training step (:meth:`Dist.step_flags`) makes every process agree on a
  stop signal and on a non-finite loss, so they all stop at the same step;
- only rank 0 prints progress and writes the run directory; checkpoints hold the unwrapped model.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass

from cvkit.errors import CvkitError, UsageError

TIMEOUT_ENV = "CVKIT_DIST_TIMEOUT"  # seconds a collective may wait for another process (default 600)
DEFAULT_TIMEOUT = 600.0
PEER_LOST_EXIT = 7


class PeerLost(CvkitError):
    """Another process of the job died or stopped answering; this one stops too. ``cause``: the
    first line of the error the process group raised."""

    exit_code = PEER_LOST_EXIT
    cause = ""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    restart: int = 0  # torchrun's restart count (TORCHELASTIC_RESTART_COUNT)
    run_id: str | None = None  # torchrun's rendezvous id, the same in every restart of one job
    backend: str | None = None
    group: bool = False  # in a process group though alone: torchrun started one process (--nproc 1)

    @property
    def enabled(self) -> bool:
        return self.world > 1 or self.group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def step_flags(self, loss: float, stop: bool, device) -> tuple[float, bool]:
        """The sum of every process's loss of this step (NaN if any is NaN) and whether any
        process was asked to stop: one all-reduce, so all processes decide alike."""
        if not self.enabled:
            return loss, stop
        import torch
        import torch.distributed as dist

        flags = torch.tensor([loss, 1.0 if stop else 0.0], dtype=torch.float64, device=device)
        with peer_errors():
            dist.all_reduce(flags)
        total, stops = flags.tolist()
        return total, stops > 0

    def any(self, flag: bool, device) -> bool:
        """Whether ``flag`` is set in any process (one all-reduce)."""
        return self.step_flags(0.0, flag, device)[1]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            with peer_errors():
                dist.barrier()


def from_env(environ=None) -> Dist:
    """What torchrun (or any launcher that sets its variables) says about this process."""
    env = os.environ if environ is None else environ

    def number(name, default):
        raw = env.get(name)
        try:
            return int(raw) if raw not in (None, "") else default
        except ValueError:
            raise UsageError(f"{name}={raw!r}: not a whole number (set by torchrun)") from None

    world = number("WORLD_SIZE", 1)
    job = {"restart": number("TORCHELASTIC_RESTART_COUNT", 0), "run_id": env.get("TORCHELASTIC_RUN_ID") or None}
    if world == 1:
        # torchrun with one process (`--nproc 1`) is data-parallel training of one: the process group,
        # DDP and the distributed sampler run as with more, which tests that path on one GPU.
        # Without torchrun's variables it is one plain process, whatever else the environment holds.
        launched = bool(env.get("TORCHELASTIC_RUN_ID") and env.get("MASTER_ADDR") and "WORLD_SIZE" in env)
        return Dist(group=True, **job) if launched else Dist(**job)
    rank = number("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank}, WORLD_SIZE={world}: not a valid process rank (set by torchrun)")
    return Dist(rank=rank, world=world, local_rank=number("LOCAL_RANK", 0),
                local_world=number("LOCAL_WORLD_SIZE", 1), **job)


def setup(info: Dist, device):
    """Join the process group; returns the device this process uses (``cuda:LOCAL_RANK`` when
    training on CUDA). Does nothing for a single process."""
    if not info.enabled:
        return device
    import datetime

    import torch
    import torch.distributed as dist

    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        timeout = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise UsageError(f"{TIMEOUT_ENV}={raw!r}: a number of seconds above 0")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if info.local_rank >= count:
            raise UsageError(f"--nproc-per-node: local rank {info.local_rank} has no GPU ({count} visible); "
                             f"start at most {count} processes per machine")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        info.backend = "nccl"
    elif device.type == "cpu":
        info.backend = "gloo"
    else:
        raise UsageError(f"--device {device}: distributed training runs on cuda (nccl) or cpu (gloo)")
    if not dist.is_initialized():
        wait = datetime.timedelta(seconds=timeout)
        store, rank, world = next(dist.rendezvous("env://", timeout=wait))
        # torchrun shares its rendezvous store with the processes of every restart; keys of this
        # attempt get their own prefix, or a restarted process may read a dead one's address
        # (pytorch/pytorch#135712)
        store = dist.PrefixStore(f"cvkit/attempt-{info.restart}/", store)
        dist.init_process_group(backend=info.backend, store=store, rank=rank, world_size=world, timeout=wait,
                                **({"device_id": device} if device.type == "cuda" else {}))
    return device


def teardown(info: Dist) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class peer_errors:
    """Turns the error a collective raises when another process died (gloo: connection closed or
    reset; nccl: a timeout or an aborted communicator) into :class:`PeerLost`, one line."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, RuntimeError):
            return False
        ignore_the_agents_sigterm()
        raise peer_lost(exc) from None


def peer_lost(exc: BaseException, where: str = "", holds: str = "") -> PeerLost:
    """The one-line error of a process whose peer died: ``where`` it noticed, what ``holds`` the
    last checkpoint. ``exc`` may be a PeerLost already, raised by a collective that knew neither."""
    cause = exc.cause if isinstance(exc, PeerLost) else first_line(exc)
    lost = PeerLost(f"{where}{': ' if where else ''}another process of this distributed job stopped or failed "
                    f"({cause}); stopping this one too" + (f"; {holds}" if holds else ""))
    lost.cause = cause
    return lost


def ignore_the_agents_sigterm() -> None:
    """This process is on its way out with exit 7: torchrun sends SIGTERM to the survivors as soon as
    it sees one process fail, often while this one is still saying why, and that SIGTERM must not
    turn exit 7 into death by signal (-15). torchrun still kills after its grace period."""
    import signal

    from cvkit.interrupts import ignore_from_now

    ignore_from_now(signal.SIGTERM)


def is_peer_failure(exc: BaseException) -> bool:
    """Whether a RuntimeError came from the process group (another process died or timed out),
    not from the model or the data."""
    try:
        import torch.distributed as dist

        if isinstance(exc, getattr(dist, "DistError", ())):
            return True
    except ImportError:  # pragma: no cover
        pass
    text = str(exc)
    return any(key in text for key in ("Gloo", "gloo", "NCCL", "Connection closed by peer",
                                       "Connection reset by peer", "ProcessGroup"))


def first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class ShardSampler:
    """Indices ``rank, rank + world, ...`` of a dataset: disjoint shards that cover every sample
    exactly once (unlike DistributedSampler, which pads with repeats), for validation."""

    def __init__(self, length: int, rank: int, world: int):
        self.indices = list(range(rank, length, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def train_sampler(dataset, info: Dist, seed: int, weights: list[float] | None = None):
    """None for a stream too: it divides its shards among the processes itself. With ``weights``
    (one per sample, ``--balance sampler``): a :class:`BalancedSampler`, in one process or several."""
    from cvkit.data import is_stream

    if weights is not None:
        return BalancedSampler(weights, info.rank if info.enabled else 0, info.world if info.enabled else 1, seed)
    if not info.enabled or is_stream(dataset):
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=info.world, rank=info.rank, shuffle=True, seed=seed)


class BalancedSampler:
    """Each epoch, ``len(weights)`` draws with replacement, sample i with probability proportional
    to ``weights[i]`` (seeded by ``seed`` and the epoch, so every process draws the same list and a
    resumed run the same order); this process takes every ``world``-th draw from ``rank``."""

    def __init__(self, weights: list[float], rank: int, world: int, seed: int):
        self.weights, self.rank, self.world, self.seed, self.epoch = list(weights), rank, world, seed, 0
        self.per_process = -(-len(self.weights) // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_process

    def __iter__(self):
        import torch

        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = torch.multinomial(torch.tensor(self.weights, dtype=torch.double),
                                  self.per_process * self.world, replacement=True, generator=generator)
        return iter(draws[self.rank::self.world].tolist())


def balance_weights(labels: list[int], num_classes: int) -> tuple[list[float], list[float]]:
    """(per class, per sample) weights that make every class count the same: n / (classes x count)
    for a class of ``count`` samples (0 for a class without any)."""
    counts = [0] * num_classes
    for label in labels:
        counts[label] += 1
    per_class = [len(labels) / (num_classes * c) if c else 0.0 for c in counts]
    return per_class, [per_class[label] for label in labels]


def eval_sampler(dataset, info: Dist):
    from cvkit.data import is_stream

    return ShardSampler(len(dataset), info.rank, info.world) if info.enabled and not is_stream(dataset) else None


def per_process_batch(batch_size: int, info: Dist) -> int:
    if batch_size % info.world:
        raise UsageError(f"--batch-size {batch_size}: the global batch must divide evenly among "
                         f"{info.world} processes (e.g. {info.world * max(1, batch_size // info.world)})")
    return batch_size // info.world


def reduce_phase(result: dict, info: Dist, device) -> dict:
    """The result of :func:`cvkit.engine.phase.run_phase` over this process's shard turned into that of
    the whole set: sums added across processes, predictions and targets gathered (in rank order),
    rate = all images / the slowest process's seconds."""
    if not info.enabled:
        return result
    import torch
    import torch.distributed as dist

    topk_key = next((k for k in result if k.startswith("top") and k.endswith("_accuracy")), None)
    seen = result["images"]
    sums = torch.tensor([result["loss"] * seen, result["accuracy"] * seen,
                         (result[topk_key] * seen) if topk_key else 0.0, float(seen)],
                        dtype=torch.float64, device=device)
    seconds = torch.tensor([result["seconds"]], dtype=torch.float64, device=device)
    with peer_errors():
        dist.all_reduce(sums)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    loss_sum, correct, correct_k, total = sums.tolist()
    total_n = max(int(round(total)), 1)
    out = dict(result)
    out.update(loss=loss_sum / total_n, accuracy=round(correct) / total_n, images=int(round(total)),
               seconds=seconds.item(), images_per_second=total / seconds.item() if seconds.item() > 0 else 0.0)
    if topk_key:
        out[topk_key] = round(correct_k) / total_n
    if "predictions" in result:
        gathered = [None] * info.world
        with peer_errors():
            dist.all_gather_object(gathered, (result["predictions"], result["targets"]))
        out["predictions"] = [p for preds, _ in gathered for p in preds]
        out["targets"] = [t for _, targets in gathered for t in targets]
    return out


def broadcast(value, info: Dist):
    """Rank 0's ``value`` on every process (a small picklable object)."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    box = [value]
    with peer_errors():
        dist.broadcast_object_list(box, src=0)
    return box[0]


# --- the convenience launcher: cvkit train --nproc N ... ---------------------------------------

def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def torchrun_command(nproc: int, cvkit_args: list[str]) -> list[str]:
    """The torchrun command that ``cvkit train --nproc N`` runs: one machine (``--standalone``,
    a free port), N processes, each ``python -m cvkit <cvkit_args>``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "cvkit", *cvkit_args]


def launch(nproc: int, cvkit_args: list[str]) -> int:
    """Run torchrun for ``cvkit train --nproc N``; returns the exit status to leave with.

    torchrun runs in its own session, and this process passes each SIGINT / SIGTERM it receives on
    to it once (torchrun passes it on to every process), so a Ctrl-C reaches each rank exactly once.
    After a signal, the status is 128 + signal number, as for a single process.
    """
    import signal
    import subprocess

    if nproc < 1:
        raise UsageError(f"--nproc {nproc}: must be at least 1")
    if os.environ.get("WORLD_SIZE") or os.environ.get("TORCHELASTIC_RUN_ID"):
        raise UsageError("--nproc: already running under torchrun; leave --nproc out")
    cmd = torchrun_command(nproc, cvkit_args)
    from cvkit import ui

    ui.err.print("cvkit: running " + " ".join(shlex.quote(c) for c in cmd), markup=False, highlight=False,
                 soft_wrap=True)
    proc = subprocess.Popen(cmd, start_new_session=True)
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()  # retried by Python after each forwarded signal (PEP 475)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if received and code != 0:
        return 128 + received[0]
    return code
