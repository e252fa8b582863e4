"""Stopping a process pool at once (Ctrl-C, an error in the caller), shared by the packet indexer and prepare_data."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor


def kill_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the jobs not started and SIGKILL the workers, without letting them finish their tasks (Python 3.14:
    pool.kill_workers()), and return when they are gone.

    The workers are killed before shutdown(), so none exits cleanly on shutdown's sentinels, and shutdown() waits
    for the pool's own thread, which sees them die and reaps them. They are not joined here as well: two threads
    waiting for one process race for its exit status, and a join that loses returns before the winner has
    recorded the exit code (seen in CI: a killed worker whose exitcode still read None).
    """
    for p in list((pool._processes or {}).values()):  # no public handle to the workers before Python 3.14
        p.kill()
    pool.shutdown(wait=True, cancel_futures=True)
