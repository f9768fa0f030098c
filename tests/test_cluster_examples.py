"""The cluster examples (`examples/cluster/`, docs/cluster.md) against the code they drive.

No cluster is needed. The shell part of each example runs here as written, with fake
`kerastx`, `srun` and `scontrol` commands first on PATH: the fake `kerastx` records the
command line and TF_CONFIG a worker would be started with. Each worker's TF_CONFIG is
compared with the one `kerastx launch` gives a local worker (`launch.worker_env`), with
the cluster's addresses for localhost's; its command line is loaded with kerastx's config
loader and turned into a cluster by kerastx's own `make_strategy`, with the strategy class
replaced so that nothing listens or connects.
"""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import tensorflow as tf
import yaml

from kerastx.config import load_experiment, typed
from kerastx.train import launch
from kerastx.train.strategy import is_chief, make_strategy, worker_index

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "cluster")
QUICKSTART = os.path.join(ROOT, "experiments", "quickstart.yaml")
MULTIWORKER = os.path.join(EXAMPLES, "distribution-multiworker.yaml")
SLURM_FRAGMENT = os.path.join(EXAMPLES, "distribution-slurm.yaml")
K8S = os.path.join(EXAMPLES, "k8s-workers.yaml")
SBATCH = os.path.join(EXAMPLES, "slurm.sbatch")

FAKE_KERASTX = """\
import json, os, sys
record = {"argv": sys.argv[1:], "TF_CONFIG": os.environ.get("TF_CONFIG"),
          "env": {k: v for k, v in os.environ.items() if k.startswith("SLURM")}}
name = os.environ.get("SLURM_PROCID", os.environ.get("JOB_COMPLETION_INDEX", "0"))
with open(os.path.join(os.environ["RECORD_DIR"], f"worker-{name}.json"), "w") as f:
    json.dump(record, f)
"""

# srun: runs the command once per node of FAKE_NODES (in that order), one task per node,
# with the variables a SLURM job step sets; its options are ignored.
FAKE_SRUN = """\
import os, subprocess, sys
command = [a for a in sys.argv[1:] if not a.startswith("--")]
nodes = os.environ["FAKE_NODES"].split()
tasks = int(os.environ.get("FAKE_TASKS", len(nodes)))
code = 0
for rank in range(tasks):
    env = {**os.environ, "SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank),
           "SLURMD_NODENAME": nodes[rank % len(nodes)],
           "SLURM_STEP_NUM_TASKS": str(tasks),
           "SLURM_STEP_NODELIST": os.environ["FAKE_NODELIST"],
           "SLURM_STEP_TASKS_PER_NODE": f"1(x{len(nodes)})"}
    code = max(code, subprocess.call(command, env=env))
sys.exit(code)
"""

# scontrol show hostnames LIST: the nodes of FAKE_NODES, if LIST is the step's node list.
FAKE_SCONTROL = """\
import os, sys
assert sys.argv[1:3] == ["show", "hostnames"], sys.argv
if sys.argv[3] != os.environ["FAKE_NODELIST"]:
    sys.exit(f"fake scontrol: asked for {sys.argv[3]!r}")
print("\\n".join(os.environ["FAKE_NODES"].split()))
"""


class FakeMultiWorkerStrategy:
    """Stands in for `tf.distribute.MultiWorkerMirroredStrategy`: keeps its arguments."""

    def __init__(self, cluster_resolver, communication_options):
        self.cluster_resolver = cluster_resolver
        self.communication_options = communication_options
        # As the real strategy does first: it reads the cluster (the SLURM resolver
        # learns its task only then).
        self.cluster = cluster_resolver.cluster_spec().as_dict()


def _script(directory, name: str, source: str) -> None:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\n{source}")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


@pytest.fixture
def fakes(tmp_path):
    """A directory of fake commands (kerastx, srun, scontrol, python3) and a record dir."""
    bin_dir, records = tmp_path / "bin", tmp_path / "records"
    bin_dir.mkdir()
    records.mkdir()
    _script(bin_dir, "kerastx", FAKE_KERASTX)
    _script(bin_dir, "srun", FAKE_SRUN)
    _script(bin_dir, "scontrol", FAKE_SCONTROL)
    os.symlink(sys.executable, bin_dir / "python3")
    return {"bin": str(bin_dir), "records": str(records)}


def _records(records: str) -> list[dict]:
    names = sorted(os.listdir(records), key=lambda n: int(n.split("-")[1].split(".")[0]))
    out = []
    for name in names:
        with open(os.path.join(records, name)) as f:
            out.append(json.load(f))
    return out


def _clean_env(**extra) -> dict:
    """The environment of a fresh worker: no cluster variables of this machine."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SLURM") and k not in ("TF_CONFIG", "JOB_COMPLETION_INDEX")
    }
    return {**env, **extra}


def _launch_tf_config(addresses: list[str], index: int) -> dict:
    """What `kerastx launch` gives local worker `index`, with `addresses` for localhost's."""
    ports = list(range(40000, 40000 + len(addresses)))
    local = json.loads(launch.worker_env(ports, index)["TF_CONFIG"])
    assert local["cluster"]["worker"] == [f"localhost:{p}" for p in ports]
    local["cluster"]["worker"] = list(addresses)
    return local


def _strategy(monkeypatch, argv: list[str], env: dict):
    """kerastx's strategy for a worker started as `kerastx <argv>` in `env` (faked class)."""
    assert argv[0] == "train"
    paths, overrides = [], []
    args = iter(argv[1:])
    for arg in args:
        if arg == "--set":
            overrides.append(next(args))
        else:
            paths.append(os.path.join(ROOT, arg))
    cfg, _ = load_experiment(paths, overrides)
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", FakeMultiWorkerStrategy)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cfg, make_strategy(cfg.distribution)


def _without(data: dict, *keys) -> dict:
    return {k: v for k, v in data.items() if k not in keys}


# -- every file ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", sorted(n for n in os.listdir(EXAMPLES) if n.endswith((".yaml", ".yml")))
)
def test_every_yaml_file_parses(name):
    with open(os.path.join(EXAMPLES, name)) as f:
        documents = [d for d in yaml.safe_load_all(f) if d is not None]
    assert documents
    assert all(isinstance(d, dict) for d in documents)


@pytest.mark.parametrize(
    "fragment, resolver", [(MULTIWORKER, "tf_config"), (SLURM_FRAGMENT, "slurm")]
)
def test_fragment_on_quickstart_changes_only_the_distribution(fragment, resolver):
    alone, _ = load_experiment(QUICKSTART)
    cfg, _ = load_experiment([QUICKSTART, fragment], ["run_dir=/shared/runs/quickstart"])
    assert cfg.distribution.strategy == "multi_worker"
    assert cfg.distribution.cluster_resolver == resolver
    assert cfg.distribution.timeout_seconds == 300
    assert cfg.run_dir == "/shared/runs/quickstart"
    # The name follows the last file (why the examples always pass run_dir).
    assert cfg.name == os.path.splitext(os.path.basename(fragment))[0]
    other = ("distribution", "name", "run_dir")
    assert _without(typed.to_data(cfg), *other) == _without(typed.to_data(alone), *other)


# -- Kubernetes ---------------------------------------------------------------------------


def _k8s() -> dict:
    with open(K8S) as f:
        documents = {d["kind"]: d for d in yaml.safe_load_all(f) if d}
    job = documents["Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    return {**documents, "container": container, "env": env}


def test_k8s_manifest_parts_name_each_other():
    k8s = _k8s()
    job, service, env = k8s["Job"], k8s["Service"], k8s["env"]
    pod = job["spec"]["template"]
    workers = int(env["WORKERS"])
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == workers
    assert env["JOB_NAME"] == job["metadata"]["name"]
    assert env["SERVICE"] == service["metadata"]["name"] == pod["spec"]["subdomain"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    port = int(env["PORT"])
    assert [p["port"] for p in service["spec"]["ports"]] == [port]
    assert [p["containerPort"] for p in k8s["container"]["ports"]] == [port]
    claim = pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == k8s["PersistentVolumeClaim"]["metadata"]["name"]
    assert "ReadWriteMany" in k8s["PersistentVolumeClaim"]["spec"]["accessModes"]
    mount = k8s["container"]["volumeMounts"][0]["mountPath"]
    assert f"--set run_dir={mount}/" in k8s["container"]["args"][0]
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 60


def test_workers_exec_kerastx_so_sigterm_reaches_it():
    # A shell left in between (PID 1 in a container) would not pass SIGTERM on.
    script = _k8s()["container"]["args"][0]
    assert [line.split()[:3] for line in script.splitlines() if "kerastx train" in line] == [
        ["exec", "kerastx", "train"]
    ]
    with open(SBATCH) as f:
        lines = [line.split()[:3] for line in f if line.strip().startswith("exec ")]
    assert lines == [["exec", "kerastx", "train"]] * 2


def _run_k8s_pods(fakes, workers: int | None = None) -> list[dict]:
    """Runs the container's command as each pod of the Job would; the recorded starts."""
    k8s = _k8s()
    container, env = k8s["container"], dict(k8s["env"])
    if workers is not None:
        env["WORKERS"] = str(workers)
    for index in range(int(env["WORKERS"])):
        proc = subprocess.run(
            [*container["command"], *container["args"]],
            env=_clean_env(
                **env,
                JOB_COMPLETION_INDEX=str(index),
                PATH=f"{fakes['bin']}{os.pathsep}{os.environ['PATH']}",
                RECORD_DIR=fakes["records"],
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
    return _records(fakes["records"])


@pytest.mark.parametrize("workers", [None, 3])
def test_k8s_pods_get_the_tf_config_launch_gives_local_workers(fakes, workers):
    started = _run_k8s_pods(fakes, workers)
    count = workers or int(_k8s()["env"]["WORKERS"])
    assert len(started) == count
    pods = [f"kerastx-worker-{i}.kerastx-workers:2222" for i in range(count)]
    for index, worker in enumerate(started):
        assert json.loads(worker["TF_CONFIG"]) == _launch_tf_config(pods, index)


def test_k8s_command_line_gives_each_pod_its_task_and_one_chief(fakes, monkeypatch):
    started = _run_k8s_pods(fakes)
    pods = ["kerastx-worker-0.kerastx-workers:2222", "kerastx-worker-1.kerastx-workers:2222"]
    chiefs = []
    for index, worker in enumerate(started):
        with monkeypatch.context() as m:
            cfg, strategy = _strategy(m, worker["argv"], {"TF_CONFIG": worker["TF_CONFIG"]})
            assert cfg.run_dir == "/runs/quickstart"
            assert cfg.data.train == load_experiment(QUICKSTART)[0].data.train
            assert strategy.cluster == {"worker": pods}
            assert worker_index(strategy) == index
            assert strategy.communication_options.timeout_seconds == 300
            chiefs.append(is_chief(strategy))
    assert chiefs == [True, False]


# -- SLURM --------------------------------------------------------------------------------


def _run_sbatch(fakes, nodes: str, nodelist: str, check=True, path=None, **env) -> tuple:
    """Runs slurm.sbatch as SLURM would run its batch step, one fake task per node."""
    bin_path = f"{fakes['bin']}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(
        ["bash", SBATCH],
        env=_clean_env(
            PATH=path or bin_path,
            RECORD_DIR=fakes["records"],
            FAKE_NODES=nodes,
            FAKE_NODELIST=nodelist,
            RUN_DIR="/shared/runs/quickstart",
            **env,
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc, _records(fakes["records"])


@pytest.mark.parametrize(
    "nodes, nodelist",
    [
        ("node01 node02 node03", "node[01-03]"),
        # Text order differs from SLURM's: each task still gets its own node's address.
        ("node9 node10", "node[9-10]"),
    ],
)
def test_slurm_tasks_get_the_tf_config_launch_gives_local_workers(fakes, nodes, nodelist):
    _, started = _run_sbatch(fakes, nodes, nodelist)
    hosts = nodes.split()
    assert len(started) == len(hosts)
    for rank, task in enumerate(started):
        tf_config = json.loads(task["TF_CONFIG"])
        assert tf_config == _launch_tf_config([f"{h}:8888" for h in hosts], rank)
        mine = tf_config["cluster"]["worker"][tf_config["task"]["index"]]
        assert mine == f"{task['env']['SLURMD_NODENAME']}:8888"
        assert task["argv"] == [
            "train",
            "experiments/quickstart.yaml",
            "examples/cluster/distribution-multiworker.yaml",
            "--set",
            "run_dir=/shared/runs/quickstart",
        ]


def test_slurm_port_and_experiment_come_from_the_environment(fakes):
    _, started = _run_sbatch(
        fakes, "a b", "a,b", KERASTX_PORT="2345", EXPERIMENT="experiments/copy_task.yaml"
    )
    assert json.loads(started[1]["TF_CONFIG"]) == _launch_tf_config(["a:2345", "b:2345"], 1)
    assert started[1]["argv"][1] == "experiments/copy_task.yaml"


def test_slurm_tf_config_command_line_builds_the_cluster(fakes, monkeypatch):
    _, started = _run_sbatch(fakes, "node01 node02", "node[01-02]")
    chiefs = []
    for rank, task in enumerate(started):
        with monkeypatch.context() as m:
            _, strategy = _strategy(m, task["argv"], {"TF_CONFIG": task["TF_CONFIG"]})
            assert strategy.cluster == {"worker": ["node01:8888", "node02:8888"]}
            assert worker_index(strategy) == rank
            chiefs.append(is_chief(strategy))
    assert chiefs == [True, False]


def test_slurm_resolver_route_reads_the_step_variables(fakes, monkeypatch):
    _, started = _run_sbatch(fakes, "node01 node02 node03", "node[01-03]", KERASTX_RESOLVER="slurm")
    chiefs = []
    for rank, task in enumerate(started):
        assert task["TF_CONFIG"] is None
        assert task["argv"][2] == "examples/cluster/distribution-slurm.yaml"
        with monkeypatch.context() as m:
            # A GPU node: TensorFlow's resolver counts the GPUs (CUDA_VISIBLE_DEVICES, else
            # nvidia-smi) and sets CUDA_VISIBLE_DEVICES itself; monkeypatch restores it.
            env = {**task["env"], "CUDA_VISIBLE_DEVICES": "0"}
            cfg, strategy = _strategy(m, task["argv"], env)
            assert cfg.distribution.cluster_resolver == "slurm"
            assert strategy.cluster == {"worker": ["node01:8888", "node02:8888", "node03:8888"]}
            assert worker_index(strategy) == rank
            chiefs.append(is_chief(strategy))
    assert chiefs == [True, False, False]


def _slurm_resolver(monkeypatch, **env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
    return resolver, resolver.cluster_spec().as_dict()["worker"]


def test_slurm_resolver_limits_stated_in_the_docs(monkeypatch):
    step = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}
    # Node names whose text order is not SLURM's: rank 0 runs on node9, but TensorFlow
    # sorts the names as text and gives rank 0 node10's address (docs/cluster.md).
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    resolver, workers = _slurm_resolver(
        monkeypatch, SLURM_PROCID="0", SLURM_STEP_NODELIST="node[9-10]", **step
    )
    assert workers == ["node10:8888", "node9:8888"]
    assert resolver.task_id == 0
    # No GPU count to be had (no CUDA_VISIBLE_DEVICES, no nvidia-smi): it cannot start.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FileNotFoundError, match="nvidia-smi"):
        tf.distribute.cluster_resolver.SlurmClusterResolver()


def test_slurm_more_tasks_than_nodes_is_one_line(fakes):
    proc, started = _run_sbatch(fakes, "node01 node02", "node[01-02]", check=False, FAKE_TASKS="4")
    assert proc.returncode != 0
    assert started == []
    assert "4 tasks on 2 nodes: run one task per node (--ntasks-per-node=1)" in proc.stderr


def test_slurm_without_scontrol_says_so(fakes):
    os.remove(os.path.join(fakes["bin"], "scontrol"))
    # Only the fake commands and the shell's own directory: no real scontrol either.
    shell_dir = os.path.dirname(shutil.which("bash"))
    if os.path.exists(os.path.join(shell_dir, "scontrol")):
        pytest.skip("this machine has scontrol next to bash")
    path = f"{fakes['bin']}{os.pathsep}{shell_dir}"
    proc, started = _run_sbatch(fakes, "node01", "node01", check=False, path=path)
    assert proc.returncode != 0
    assert started == []
    assert "slurm.sbatch: scontrol not found: run this inside a SLURM job" in proc.stderr
