"""Multi-worker training: who this process is (TF_CONFIG), its tf.distribute strategy, a barrier,
its share of the work, and one-line errors when a peer dies or hangs.

TF_CONFIG is what Kubernetes TFJob and Vertex AI set::

    {"cluster": {"chief": ["host:port"], "worker": ["host:port", ...]},
     "task": {"type": "worker", "index": 1}}

A "chief" job (TFJob and Vertex AI may set one) is a training worker like the others, as
MultiWorkerMirroredStrategy treats it: it is rank 0 and the workers follow it (rank = index + 1).
Parameter servers and evaluators are not supported (this is all-reduce training).

How a lost peer is noticed (TF 2.21, tensorflow/python/distribute/collective_all_reduce_strategy.py):
MWMS configures TF's coordination service (leader: the chief, else worker 0), so its Python
health-check thread is off and the service's heartbeats watch every task instead. A task that
stops heartbeating (killed, crashed, machine gone) is reported within the heartbeat timeout
(kDefaultHeartbeatTimeoutMs = 10 s in xla/tsl coordination_service.cc) and every pending and
later collective fails with UnavailableError ("tasks are unhealthy (stopped sending heartbeats)").
A peer that is alive but stuck keeps heartbeating, so each collective also has a timeout
(CommunicationOptions.timeout_seconds -> DeadlineExceededError "Collective has timed out").
Not covered: the broadcast of initial values when variables are created under the scope takes
no timeout (broadcast_send/recv in the same file), so a peer stuck before building its model
blocks the others until it dies. :func:`cluster_errors` turns both errors into one-line
:class:`ClusterError`.

Start-up (:func:`make_strategy`): left alone, MWMS waits an hour for every task to register and
prints nothing. We configure the coordination service ourselves, as MWMS would (it then keeps
ours), with ``cluster_register_with_barrier`` and ``cluster_register_timeout_in_ms`` =
$EDGE_TRANSFER_STARTUP_TIMEOUT_S: the leader (rank 0) fails its registration barrier with
DeadlineExceededError naming the tasks that never came, a worker whose leader never answers
fails its RegisterTask call a few seconds later. The wait itself runs inside TensorFlow's C++
with the GIL held: what the worker shows and how it stops meanwhile is :mod:`trainer.fit.signals`'
business (a supervisor process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

TIMEOUT_ENV = "EDGE_TRANSFER_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300.0  # a training step's all-reduce: generous, a step takes seconds
BARRIER_TIMEOUT_S = 3600.0  # a barrier after uneven work (feature extraction shares)
STARTUP_ENV = "EDGE_TRANSFER_STARTUP_TIMEOUT_S"
# every worker must have registered by then: long enough for the usual skew between machines of
# one job (a pod scheduled or an image pulled a minute or two after the first), short enough that
# a worker nobody started fails while its operator still watches (TF's own default: an hour)
DEFAULT_STARTUP_S = 300.0
HEARTBEAT_TIMEOUT_S = 10  # TF's default (kDefaultHeartbeatTimeoutMs), set explicitly
RESUME_HINT = "rerun every worker to resume"


class ClusterError(ValueError):
    """A bad TF_CONFIG or a lost worker; the CLI prints it as one line (exit 2)."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place among the training workers (rank 0 = the chief)."""

    workers: int = 1
    rank: int = 0
    addresses: tuple[str, ...] = ()  # "host:port" in rank order; empty for one local worker
    has_chief_job: bool = False  # TF_CONFIG named a "chief" job (it holds rank 0)

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def task(self) -> tuple[str, int]:
        """(TF_CONFIG task type, index) of this rank."""
        if self.has_chief_job:
            return ("chief", 0) if self.rank == 0 else ("worker", self.rank - 1)
        return "worker", self.rank

    def spec(self) -> dict[str, list[str]]:
        """The cluster as tf.train.ClusterSpec wants it."""
        if self.has_chief_job:
            return {"chief": list(self.addresses[:1]), "worker": list(self.addresses[1:])}
        return {"worker": list(self.addresses)}

    def rank_of(self, job: str, index: int) -> int:
        return index + 1 if self.has_chief_job and job == "worker" else index

    def name(self, rank: int, of: bool = False) -> str:
        """How TF_CONFIG names a rank, with its address: 'worker 1 (host:port)', 'chief (host:port)';
        ``of``: 'worker 1 of 3 (host:port)'."""
        job, index = dataclasses.replace(self, rank=rank).task
        total = f" of {self.workers}" if of else ""
        return f"{'chief' if job == 'chief' else f'worker {index}'}{total} ({self.addresses[rank]})"

    @property
    def peers(self) -> list[int]:
        return [r for r in range(self.workers) if r != self.rank]

    @classmethod
    def of(cls, strategy) -> "Cluster":
        """The cluster a strategy runs on (one local worker unless it is multi-worker; None too)."""
        resolver = getattr(strategy, "cluster_resolver", None)
        spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
        addresses = (*spec.get("chief", ()), *spec.get("worker", ()))
        if len(addresses) < 2:
            return cls()
        cluster = cls(len(addresses), 0, addresses, bool(spec.get("chief")))
        return dataclasses.replace(cluster, rank=cluster.rank_of(resolver.task_type, resolver.task_id))

    @classmethod
    def from_env(cls, environ=None) -> "Cluster":
        """Parse $TF_CONFIG; none (or empty) means one local worker."""
        return parse((os.environ if environ is None else environ).get("TF_CONFIG", ""))


def parse(text: str) -> Cluster:
    """TF_CONFIG text -> Cluster, or a one-line ClusterError saying what is wrong."""
    if not text.strip():
        return Cluster()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClusterError(f"TF_CONFIG is not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or not config["cluster"]:
        raise ClusterError('TF_CONFIG needs a "cluster" object, e.g. {"cluster": {"worker": ["host:port", ...]}, '
                           '"task": {"type": "worker", "index": 0}}')
    jobs = config["cluster"]
    other = sorted(set(jobs) - {"chief", "worker"})
    if other:
        raise ClusterError(f"TF_CONFIG job {other[0]!r} is not supported: all-reduce training uses only "
                           '"chief" and "worker" jobs')
    for job, addresses in jobs.items():
        if not isinstance(addresses, list) or not addresses or not all(_is_address(a) for a in addresses):
            raise ClusterError(f'TF_CONFIG cluster "{job}" must be a non-empty list of "host:port" strings, '
                               f"got {json.dumps(addresses)[:80]}")
    if len(jobs.get("chief", [])) > 1:
        raise ClusterError(f'TF_CONFIG may name one "chief", got {len(jobs["chief"])}')
    addresses = (*jobs.get("chief", []), *jobs.get("worker", []))
    if len(set(addresses)) != len(addresses):
        raise ClusterError("TF_CONFIG lists the same host:port twice")
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in jobs:
        raise ClusterError(f'TF_CONFIG "task" must be {{"type": one of {sorted(jobs)}, "index": N}}, '
                           f"got {json.dumps(task)[:80]}")
    index = task.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(jobs[task["type"]]):
        raise ClusterError(f'TF_CONFIG task index must be 0..{len(jobs[task["type"]]) - 1} for job '
                           f'"{task["type"]}", got {index!r}')
    cluster = Cluster(len(addresses), 0, addresses, "chief" in jobs)
    return Cluster(cluster.workers, cluster.rank_of(task["type"], index), addresses, cluster.has_chief_job)


def _is_address(value) -> bool:
    host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def collective_timeout() -> float:
    """Seconds a collective waits for its peers ($EDGE_TRANSFER_COLLECTIVE_TIMEOUT_S; tests shorten it)."""
    return _seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


def startup_timeout() -> float:
    """Seconds every worker has to join the cluster ($EDGE_TRANSFER_STARTUP_TIMEOUT_S)."""
    return _seconds(STARTUP_ENV, DEFAULT_STARTUP_S)


def _seconds(env: str, default: float) -> float:
    value = os.environ.get(env, "")
    try:
        seconds = float(value) if value else default
    except ValueError:
        raise ClusterError(f"{env} must be a number of seconds, got {value!r}") from None
    if not 0 < seconds < float("inf"):
        raise ClusterError(f"{env} must be positive, got {value!r}")
    return seconds


def unreachable(cluster: Cluster, ranks: Sequence[int], timeout_s: float = 1.0) -> list[int]:
    """The ranks whose address accepts no TCP connection now (not started, or a wrong address).

    A started worker listens on its TF_CONFIG port (its gRPC server) while it waits for the others."""
    def closed(rank: int) -> bool:
        host, _, port = cluster.addresses[rank].rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
        except OSError:
            return True
        return False

    if not ranks:
        return []
    with ThreadPoolExecutor(min(16, len(ranks))) as pool:  # a dropped SYN costs timeout_s, once
        return [r for r, shut in zip(ranks, pool.map(closed, ranks)) if shut]


def make_strategy(cluster: Cluster):
    """MultiWorkerMirroredStrategy for several workers, MirroredStrategy for several local GPUs,
    else the default strategy.

    Call it first, before any other TensorFlow op: MWMS starts this worker's gRPC server and
    configures collectives and the coordination service, which TF only allows before its eager
    context is initialized. It returns once every worker has registered, or fails with a one-line
    ClusterError naming the missing ones after $EDGE_TRANSFER_STARTUP_TIMEOUT_S."""
    import tensorflow as tf

    if cluster.workers > 1:
        timeout_s, collective_s = startup_timeout(), collective_timeout()
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster.spec()), task_type=cluster.task[0], task_id=cluster.task[1],
            num_accelerators={"GPU": len(tf.config.list_physical_devices("GPU"))}, rpc_layer="grpc")
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_s)
        _configure_coordination(cluster, timeout_s)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
        except tf.errors.OpError as exc:
            raise ClusterError(startup_message(exc, cluster, timeout_s)) from None
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _configure_coordination(cluster: Cluster, timeout_s: float) -> None:
    """TF's coordination service as MWMS configures it (leader: rank 0; chief and worker jobs),
    plus a registration barrier that fails after ``timeout_s`` and the heartbeat timeout."""
    from tensorflow.python.eager import context

    try:
        from tensorflow.compiler.xla.tsl.protobuf.coordination_config_pb2 import CoordinatedJob
    except ImportError:  # another TF layout: its defaults (the supervisor's backstop still ends the wait)
        return
    leader_job = "chief" if cluster.has_chief_job else "worker"
    ctx = context.context()
    ctx.configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{leader_job}/replica:0/task:0",
        cluster_register_timeout_in_ms=int(timeout_s * 1000), heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_S * 1000,
        coordinated_jobs=[CoordinatedJob(name=job, num_tasks=len(a)) for job, a in cluster.spec().items()])
    config = ctx.coordination_service
    if "cluster_register_with_barrier" in config.DESCRIPTOR.fields_by_name:
        config.cluster_register_with_barrier = True  # else the wait for the others takes no timeout


def startup_message(exc, cluster: Cluster, timeout_s: float) -> str:
    """One line for a cluster that did not form: who is missing and what to check."""
    import tensorflow as tf

    text = str(getattr(exc, "message", "") or exc)
    if not isinstance(exc, tf.errors.DeadlineExceededError):
        first = next((line.strip() for line in text.splitlines() if line.strip()), "unavailable")
        return f"could not join the cluster as {cluster.name(cluster.rank)}: {first[:160]}"
    named = text[text.find("timed out task names"):] if "timed out task names" in text else ""
    missing = {cluster.rank_of(job, int(i)) for job, i in _TASK.findall(named)}
    if not missing and not cluster.is_chief:
        missing = {0}  # the leader never answered this worker's registration
    return not_joined(cluster, missing, timeout_s)


def not_joined(cluster: Cluster, missing, timeout_s: float) -> str:
    """'worker 1 (host:port) did not join within 300 s (...): check ...'; the peers that accept
    no connection now are named too (TF names at most two of the missing)."""
    missing = (set(missing) | set(unreachable(cluster, cluster.peers))) - {cluster.rank}
    who = ", ".join(cluster.name(r) for r in sorted(missing)) or "some workers"
    return (f"{who} did not join within {timeout_s:g} s ({STARTUP_ENV}): check that every worker is "
            "started with the same TF_CONFIG cluster and its own task index, and that these addresses "
            "are reachable from this machine")


def all_sum(strategy, values, timeout_s: float | None = None) -> np.ndarray:
    """The element-wise sum of ``values`` (a float vector) over the workers, the same on each.

    One host-level contribution per worker, whatever its number of local replicas."""
    import tensorflow as tf

    local = max(1, strategy.num_replicas_in_sync // Cluster.of(strategy).workers)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s)
    x = tf.constant(np.asarray(values, np.float32))

    def contribute():
        ctx = tf.distribute.get_replica_context()
        mine = tf.where(ctx.replica_id_in_sync_group % local == 0, x, tf.zeros_like(x))
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, mine, options=options)

    reduced = tf.function(lambda: strategy.run(contribute))()
    return np.asarray(strategy.experimental_local_results(reduced)[0])


def barrier(strategy, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Wait until every worker arrives (e.g. each wrote its share of the feature cache).

    A cross-worker all-reduce: it also checks that all workers count the same cluster. A worker
    that dies meanwhile fails it within the heartbeat timeout, not ``timeout_s``."""
    with cluster_errors(Cluster.of(strategy), timeout_s):
        arrived = int(all_sum(strategy, [1.0], timeout_s)[0])
    if arrived != Cluster.of(strategy).workers:
        raise ClusterError(f"barrier counted {arrived} workers, expected {Cluster.of(strategy).workers}")


def gather_rows(strategy, n: int, rows: np.ndarray, local: np.ndarray,
                timeout_s: float = BARRIER_TIMEOUT_S) -> np.ndarray:
    """The (n, k) array whose ``rows`` this worker computed as ``local`` and the others the rest
    (disjoint shares, e.g. from :func:`share`), the same on every worker. Exact: each element is
    one worker's value plus zeros. The timeout is a barrier's: the shares may finish unevenly."""
    local = np.asarray(local, np.float32)
    if len(local) != len(rows):
        raise ValueError(f"gather_rows: {len(local)} rows computed for a share of {len(rows)}")
    mine = np.zeros((n, local.shape[1]), np.float32)
    mine[rows] = local
    with cluster_errors(Cluster.of(strategy), timeout_s):
        return all_sum(strategy, mine.ravel(), timeout_s).reshape(mine.shape)


def share(items: Sequence, cluster: Cluster) -> Sequence:
    """This worker's part of ``items`` (a list, tuple or array): every N-th from its rank.

    Deterministic and disjoint, and together the workers cover every item."""
    return items[cluster.rank::cluster.workers]


_TASK = re.compile(r"/job:(chief|worker)/(?:replica:\d+/)?task:(\d+)")


@contextlib.contextmanager
def cluster_errors(cluster: Cluster | None = None, timeout_s: float | None = None) -> Iterator[None]:
    """Turn TensorFlow's errors for a lost or stuck peer into one-line ClusterError.

    ``cluster``: default $TF_CONFIG's; ``timeout_s``: the collectives' timeout, if not the default.
    Only with several workers: on one, such errors are bugs and keep their traceback."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as exc:
        cluster = cluster or Cluster.from_env()
        if cluster.workers < 2:
            raise
        raise ClusterError(lost_worker_message(exc, cluster, timeout_s or collective_timeout())) from None


def lost_worker_message(exc, cluster: Cluster, timeout_s: float) -> str:
    """'worker N lost (why); rerun every worker to resume', naming N when TF's error does."""
    import tensorflow as tf

    text = str(getattr(exc, "message", "") or exc)
    named = text[text.find("unhealthy"):] if "unhealthy" in text else text
    peers = [cluster.rank_of(job, int(i)) for job, i in _TASK.findall(named)]
    peers = [p for p in peers if p != cluster.rank]
    if isinstance(exc, tf.errors.DeadlineExceededError):
        why = (f"no answer within the {timeout_s:g} s collective timeout: hung or far behind; "
               f"{TIMEOUT_ENV} sets it")
        if not peers and cluster.workers == 2:
            peers = [1 - cluster.rank]
    elif "heartbeat" in text:
        why = "stopped sending heartbeats: killed, crashed or unreachable"
    elif re.search(r"connect|socket closed", text, re.IGNORECASE):
        why = "connection refused or closed: killed, crashed or unreachable"
    else:
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and not line.startswith(("Graph execution error", "Detected at node"))]
        why = (lines or ["unavailable"])[0][:160]
    who = f"worker {peers[0]}" if peers else "a worker"
    return f"{who} lost ({why}); {RESUME_HINT}"
