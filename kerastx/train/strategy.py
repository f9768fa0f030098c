"""The tf.distribute strategy a run's `distribution:` section names.

One code path trains under all of them: the trainer only uses `strategy.scope()`,
`strategy.run`, `distribute_datasets_from_function` and replica-context all-reduces.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from kerastx.config import DistributionConfig
from kerastx.errors import KerastxError


def configure_logical_cpus(count: int) -> None:
    """Splits the host CPU into `count` logical devices (must run before TF starts).

    Args:
        count: int. Number of logical CPU devices; 0 leaves the CPU as one device.

    Raises:
        KerastxError: TensorFlow already initialized its devices with another split.
    """
    if count <= 0:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as err:
        raise KerastxError(
            f"distribution.logical_cpus={count}: TensorFlow was already initialized in this "
            f"process ({err}); set it in a fresh process"
        ) from None


def _short_name(device: tf.DeviceSpec) -> str:
    return f"/{device.device_type.lower()}:{device.device_index}"


def check_devices(names: list[str], available: list[str]) -> list[str]:
    """The `distribution.devices` names, each parsed and found among this machine's.

    Args:
        names: the configured device names (`/gpu:0`, `GPU:1`, `/device:CPU:0`, ...).
        available: the names of this machine's logical devices
            (`tf.config.list_logical_devices()`).

    Returns:
        The names, as given.

    Raises:
        KerastxError: a name that is not a device name, names no single device, or
            names a device this machine does not have (the ones it has are listed).
    """
    have = {}
    for name in available:
        spec = tf.DeviceSpec.from_string(name)
        have[(spec.device_type, spec.device_index)] = _short_name(spec)
    listed = ", ".join(sorted(have.values()))
    problems = []
    for i, name in enumerate(names):
        key = f"distribution.devices[{i}]"
        try:
            spec = tf.DeviceSpec.from_string(name)
        except (ValueError, TypeError):
            spec = None
        if spec is None or spec.device_type is None or spec.device_index is None:
            problems.append(
                f"{key}: {name!r} is not the name of one device; write it as /gpu:0 or "
                f"/cpu:0 (this machine has {listed})"
            )
        elif (
            spec.job not in (None, "localhost") or (spec.device_type, spec.device_index) not in have
        ):
            problems.append(
                f"{key}: {name!r}: no such device on this machine; it has {listed} "
                f"(empty distribution.devices = all local GPUs, else the CPU)"
            )
    if problems:
        raise KerastxError("\n".join(problems))
    return list(names)


def _local_devices(cfg: DistributionConfig) -> list[str]:
    if cfg.devices:
        return check_devices(cfg.devices, [d.name for d in tf.config.list_logical_devices()])
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return [d.name for d in gpus]
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, logs and exports (task 0 of a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This process's index among the workers (0 when not multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return 0
    return int(resolver.task_id or 0)


def make_strategy(cfg: DistributionConfig) -> tf.distribute.Strategy:
    """Builds the strategy of a `distribution:` section.

    Args:
        cfg: the distribution section.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        KerastxError: the cluster or devices are unusable, with the key to change.
    """
    configure_logical_cpus(cfg.logical_cpus)
    name = cfg.strategy
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        devices = _local_devices(cfg)
        return tf.distribute.OneDeviceStrategy(devices[0])
    if name == "mirrored":
        devices = _local_devices(cfg)
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if cfg.cluster_resolver == "slurm":
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
        else:
            if not os.environ.get("TF_CONFIG"):
                raise KerastxError(
                    "distribution.strategy=multi_worker needs the TF_CONFIG environment "
                    "variable (or distribution.cluster_resolver=slurm); try "
                    "`kerastx launch --workers 2 EXP` on one machine"
                )
            try:
                json.loads(os.environ["TF_CONFIG"])
            except ValueError as err:
                raise KerastxError(f"TF_CONFIG is not valid JSON: {err}") from None
            resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=float(cfg.timeout_seconds)
        )
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=options
        )
    if name == "tpu":
        return _tpu_strategy(cfg.tpu)
    raise KerastxError(f"distribution.strategy: unknown strategy {name!r}")  # pragma: no cover


def _tpu_strategy(tpu: str) -> tf.distribute.Strategy:
    """A `TPUStrategy` on the TPU `tpu` names; no TPU is one line.

    Raises:
        KerastxError: the resolver finds no TPU (no name on a machine without one, an
            unknown name, no TPU runtime): TensorFlow's reason, shortened.
    """
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as err:
        raise KerastxError(
            f"distribution.strategy=tpu: no TPU found (distribution.tpu={tpu!r}): "
            f"{short_reason(err)}; set distribution.tpu to the TPU's name or grpc:// "
            f"address, or use another distribution.strategy"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def short_reason(err: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message (TensorFlow's run to pages)."""
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    text = " ".join(text.strip().split("\n")[0].split())
    first = text.split(". ")[0].rstrip(".")
    return first if len(first) <= limit else first[: limit - 3] + "..."
