"""Training across processes and machines: who starts the processes, and how rank 0 shares its run with them.

Two ways to run one training job in several processes:

* **Detectron2's** ``launch``: this command starts ``num_processes`` processes on each of ``num_machines``
  machines (the same command on each, with its ``machine_rank`` and machine 0's ``dist_url``);
* **a cluster's launcher** (``torchrun``, a Kubernetes PyTorchJob or Indexed Job, Slurm's ``srun``) starts every
  process itself and tells each its place through ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and
  ``LOCAL_WORLD_SIZE``), ``MASTER_ADDR`` and ``MASTER_PORT``; the processes join with ``init_method=env://``.

Either way there is one MLflow run: global rank 0 plans, starts and records it, and writes the checkpoints;
every other process checks its own inputs but never talks to the tracking server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from seizure_mlflow.errors import ConfigError, UserError

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class LauncherProcess:
    """This process's place in a job that a cluster's launcher started."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launcher_from_env(environ=None) -> LauncherProcess | None:
    """The launcher's description of this process, or None when no launcher set ``RANK`` and ``WORLD_SIZE``.

    Raises :class:`ConfigError` naming the variable when the set is incomplete or not numbers.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    missing = [name for name in LAUNCHER_VARIABLES if not env.get(name)]
    if missing:
        raise ConfigError(f"RANK and WORLD_SIZE are set, as a launcher does, but {', '.join(missing)} is not; set "
                          "all of RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (torchrun does)")
    try:
        world = int(env["WORLD_SIZE"])
        process = LauncherProcess(rank=int(env["RANK"]), world_size=world, local_rank=int(env["LOCAL_RANK"]),
                                  local_world_size=int(env.get("LOCAL_WORLD_SIZE") or world))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers; got "
                          + ", ".join(f"{k}={env.get(k)!r}" for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                        "LOCAL_WORLD_SIZE"))) from None
    if not (0 <= process.rank < process.world_size and 0 <= process.local_rank < process.local_world_size):
        raise ConfigError(f"launcher variables out of range: RANK={process.rank} WORLD_SIZE={process.world_size} "
                          f"LOCAL_RANK={process.local_rank} LOCAL_WORLD_SIZE={process.local_world_size}")
    return process


def check_launcher_params(params) -> None:
    """Under a launcher, the launcher decides the processes: the parameters that would too must keep their defaults."""
    if params.num_processes != 1 or params.num_machines != 1 or params.machine_rank != 0:
        raise ConfigError("a launcher set RANK and WORLD_SIZE: it starts the processes, so leave num_processes, "
                          "num_machines and machine_rank at their defaults (1, 1, 0)", param="num_processes")


def world_size(params, launcher: LauncherProcess | None) -> int:
    return launcher.world_size if launcher is not None else params.num_processes * params.num_machines


def join_process_group(launcher: LauncherProcess, device: str) -> None:
    """Join the launcher's job (``env://``; NCCL on GPUs, gloo on CPUs) and make Detectron2's per-machine group."""
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if on_gpu:
        torch.cuda.set_device(launcher.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_gpu else "gloo", init_method="env://")
    if comm._LOCAL_PROCESS_GROUP is None:
        comm.create_local_process_group(launcher.local_world_size)
    comm.synchronize()


def leave_process_group() -> None:
    """Take this process's groups down in order (idempotent). Left to the interpreter's exit, gloo's threads can
    abort the process ("terminate called without an active exception", SIGABRT), and a launcher such as torchrun
    then stops every other process of the job. Local: it waits for no other process."""
    import torch.distributed as dist
    from detectron2.utils import comm

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    comm._LOCAL_PROCESS_GROUP = None
    comm.create_local_process_group.cache_clear()  # a later join in this process makes its local group anew


def share(value):
    """Every process gives a value; every process gets them all, by global rank (a collective call)."""
    from detectron2.utils import comm

    return comm.all_gather(value)


def agree_to_start(error: BaseException | None) -> None:
    """Every process says whether its checks passed; if any failed, every process stops with that message
    (so no process waits for the others until a timeout, and no run is started)."""
    statuses = share(None if error is None else f"{type(error).__name__}: {error}")
    failed = [(rank, message) for rank, message in enumerate(statuses) if message is not None]
    if error is not None:
        raise error
    if failed:
        rank, message = failed[0]
        raise UserError(f"process {rank} of the job failed its checks ({message}); nothing was started")


@dataclass(frozen=True)
class Job:
    """This process's part in a training job: the launcher's view of it (None without one) and the machine rank.

    Global rank 0 *leads*: it plans, records the one MLflow run and writes the checkpoints; every other process
    *follows*: it checks its own inputs and trains beside the leader, never talking to the tracking server.
    Under a launcher the leader tells the followers its output folder (or that it failed) with
    :meth:`announce` / :meth:`announce_failure`, and the followers wait for it in :meth:`hear_leader`.
    """

    launcher: LauncherProcess | None
    machine_rank: int = 0

    @property
    def leads(self) -> bool:
        return (self.launcher is None or self.launcher.rank == 0) and self.machine_rank == 0

    def describe(self) -> str:
        if self.launcher is not None:
            return f"rank {self.launcher.rank} of {self.launcher.world_size}"
        return f"machine {self.machine_rank}"

    def agree_to_start(self, error: BaseException | None) -> None:
        """Under a launcher, every process says whether its checks passed (see :func:`agree_to_start`)."""
        if self.launcher is not None:
            agree_to_start(error)

    def announce(self, output_dir: str) -> None:
        if self.launcher is not None:
            share(("ok", output_dir))

    def announce_failure(self, error: BaseException) -> None:
        if self.launcher is not None:
            share(("error", f"{type(error).__name__}: {error}"))

    def hear_leader(self) -> str | None:
        """A follower's wait for rank 0's output folder (under a launcher; None without one)."""
        if self.launcher is None:
            return None
        status, detail = share(None)[0]
        if status != "ok":
            raise UserError(f"rank 0 stopped before training: {detail}")
        return detail


def run_as_job(params, lead, follow):
    """Join the job this process belongs to and run ``lead(job)`` on global rank 0, ``follow(job)`` elsewhere;
    returns what ``lead`` returns (None on a follower). A process that joined a launcher's job leaves its process
    group when its part ends, however it ends (see :func:`leave_process_group`)."""
    launcher = launcher_from_env()
    if launcher is not None:
        check_launcher_params(params)
        join_process_group(launcher, params.device)
    job = Job(launcher, params.machine_rank)
    try:
        if job.leads:
            return lead(job)
        follow(job)
        return None
    finally:
        if launcher is not None:
            leave_process_group()
