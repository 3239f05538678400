"""Where the census runs: a Dask cluster, local by default (docs/METHOD.md §10.3).

``census_client`` gives a ``distributed.Client`` on a ``LocalCluster`` of this machine,
on a running scheduler (an address), or on a SLURM/PBS/... cluster started through
``dask-jobqueue``, which academic groups run. The census code is the same on all three.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import dask
import torch
from distributed import Client, LocalCluster

# dask-jobqueue cluster classes by the name given as ``scheduler``.
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster",
            "lsf": "LSFCluster", "htcondor": "HTCondorCluster", "oar": "OARCluster",
            "moab": "MoabCluster"}
GPU = "GPU"  # the worker resource a GPU task asks for


def default_workers() -> int:
    """One worker per GPU when there are GPUs, else one per core (at most 8)."""
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, min(8, os.cpu_count() or 1))


def local_cluster(workers: int | None = None, *, threads_per_worker: int = 1,
                  memory_limit: str | float = "auto") -> LocalCluster:
    """A ``LocalCluster`` of worker processes, quiet, its HTTP server on a free port; on a GPU
    machine each worker advertises one ``GPU`` resource."""
    n = workers or default_workers()
    resources = {GPU: 1} if torch.cuda.is_available() else None
    with _workers_ignore_ctrl_c():
        return LocalCluster(n_workers=n, threads_per_worker=threads_per_worker,
                            processes=True, memory_limit=memory_limit, dashboard_address=":0",
                            silence_logs=logging.CRITICAL, resources=resources)


@contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (they inherit it): Ctrl-C reaches the
    whole process group, and only the client should stop, closing the cluster in order,
    instead of every worker printing its own KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def jobqueue_cluster(kind: str, **options: Any):
    """A dask-jobqueue cluster (``kind`` in ``JOBQUEUE``), not yet scaled.

    Cores, memory, queue and account come from ``options`` or from the user's dask
    configuration (``~/.config/dask/jobqueue.yaml``), as dask-jobqueue documents; GPU
    workers advertise ``worker_extra_args=["--resources", "GPU=1"]``.
    """
    try:
        import dask_jobqueue
    except ImportError:
        raise RuntimeError("scheduler 'slurm'/'pbs'/... needs dask-jobqueue: "
                           "pip install dask-jobqueue") from None
    return getattr(dask_jobqueue, JOBQUEUE[kind])(**options)


@contextmanager
def census_client(scheduler: str | None = None, *, workers: int | None = None,
                  **options: Any) -> Iterator[Client]:
    """A Dask client for the census, closed (with its cluster) on exit, also on error.

    Args:
        scheduler: None or 'local' for a ``LocalCluster`` on this machine; 'slurm', 'pbs',
            'sge', 'lsf', 'htcondor', 'oar' or 'moab' for a dask-jobqueue cluster; else the
            address of a running scheduler ('tcp://host:8786').
        workers: local worker processes (default: one per GPU, else per core) or jobqueue
            jobs; ignored for an address.
        **options: passed to ``LocalCluster`` or to the jobqueue cluster.

    Yields:
        The ``distributed.Client``.

    Example:
        >>> with census_client(workers=2) as client:
        ...     table = run_census(jobs, settings("default"), client=client)
    """
    # A model that kills its worker (out of memory) is an error row, not retried 3 times.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        if scheduler in (None, "", "local"):
            cluster = local_cluster(workers, **options)
        elif scheduler in JOBQUEUE:
            cluster = jobqueue_cluster(scheduler, **options)
            cluster.scale(jobs=workers or 1)
        else:
            cluster = None
        try:
            client = Client(cluster if cluster is not None else scheduler,
                            set_as_default=False)
            try:
                if cluster is not None and scheduler in JOBQUEUE:
                    print(f"census: waiting for the first {scheduler} worker (queued job)")
                    client.wait_for_workers(1)
                yield client
            finally:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()


def has_gpu_workers(client: Client) -> bool:
    """Whether any worker of ``client`` advertises a ``GPU`` resource."""
    workers = client.scheduler_info().get("workers", {})
    return any(w.get("resources", {}).get(GPU, 0) > 0 for w in workers.values())


def worker_count(client: Client) -> int:
    """Workers connected to ``client``'s scheduler now."""
    return len(client.scheduler_info().get("workers", {}))
