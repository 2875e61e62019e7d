"""A Topology as the environment a worker or gateway process reads it from.

The one mapping of the queue and exchange names to their settings (worker.config), for the tests and
benchmarks that start `cmd/*/main.py` as subprocesses on a topology of their own.
"""

from worker.service.publisher import Topology


def topology_env(topology: Topology) -> dict[str, str]:
    """JOBS_QUEUE and the rest, as `worker.wiring.topology` reads them back.

    A topology without a chunk queue gives CHUNKS_QUEUE="" (fan-out off), not the default queue name; the
    same for the interactive lane (INTERACTIVE_QUEUE="").
    """
    return {
        "JOBS_QUEUE": topology.jobs_queue,
        "RESULTS_QUEUE": topology.results_queue,
        "DEAD_LETTER_EXCHANGE": topology.dead_letter_exchange,
        "DEAD_LETTER_QUEUE": topology.dead_letter_queue,
        "PROGRESS_EXCHANGE": topology.progress_exchange,
        "DELIVERY_LIMIT": str(topology.delivery_limit),
        "CHUNKS_QUEUE": topology.chunks_queue or "",
        "CHUNKS_DEAD_LETTER_QUEUE": topology.chunks_dead_letter_queue,
        "INTERACTIVE_QUEUE": topology.interactive_queue or "",
    }
