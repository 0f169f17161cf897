"""The deployment configs in ``infra/``, validated as far as this machine allows.

No cloud, Kubernetes or Docker daemon here, so: every file parses; Ray's own validator accepts the
cluster launcher config; every ``ray start`` line and KubeRay ``rayStartParams`` parse with
Ray's own ``ray start`` command-line parser; every ``python -m search.run`` line in a manifest
parses with the search's own parser and passes its option checks; the security defaults hold
(127.0.0.1 binds, authentication on, secrets only from the environment); the MLflow server's
entrypoint is run for real (SQLite instead of PostgreSQL, a folder instead of MinIO) and refuses
requests without credentials; the local cluster script starts, reports and stops a real cluster.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
CLUSTER_YAML = INFRA / "ray" / "cluster-aws-gpu.yaml"
RAYJOB_YAML = INFRA / "kuberay" / "rayjob.yaml"
COMPOSE_DIR = INFRA / "mlflow"
COMPOSE_YAML = COMPOSE_DIR / "compose.yaml"
LOCAL_CLUSTER = INFRA / "local-cluster.sh"
RAY_DOCKERFILE = INFRA / "docker" / "Dockerfile"

SEARCH_RUN = re.compile(r"python -m search\.run\b")


# ------------------------------------------------------------------------------------ helpers
def search_run_argv(text: str) -> list[list[str]]:
    """Every ``python -m search.run ...`` command in ``text`` (comments included), as the argv
    after ``search.run``. ``"$VAR"`` is expanded the way the shell on the head would, with a
    placeholder value."""
    found = []
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        m = SEARCH_RUN.search(line)
        if m:
            found.append(line[m.end():])
    return [shlex.split(os.path.expandvars(cmd)) for cmd in found]


def check_search_command(argv: list[str]) -> dict[str, Any]:
    """The options parse with search.run's own parser and pass its checks that need no cluster."""
    from search.prepare.cli import parse_args
    from search.prepare.config import SearchConfig
    from search.prepare.resolve import resolve

    given = parse_args(argv)
    if not given.get("resume"):
        resolve(SearchConfig(**given))
    return given


def ray_start_args(command: str) -> list[list[str]]:
    """The arguments of every ``ray start`` in a shell command line."""
    out = []
    for part in re.split(r"[;&|]+", command):
        words = shlex.split(part)
        for i in range(len(words) - 1):
            if words[i] == "ray" and words[i + 1] == "start":
                out.append(words[i + 2:])
    return out


def parse_ray_start(args: list[str]) -> dict[str, Any]:
    """``ray start`` options parsed by Ray's own click command (nothing is started)."""
    from ray.scripts.scripts import start

    ctx = start.make_context("ray start", list(args))
    return ctx.params


@pytest.fixture(autouse=True)
def _placeholder_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.org")


# ------------------------------------------------------------------------- Ray cluster launcher
@pytest.fixture(scope="module")
def cluster_config() -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    validate_config(config)  # Ray's schema and consistency checks
    return config


def test_cluster_launcher_node_types(cluster_config):
    types = cluster_config["available_node_types"]
    head = cluster_config["head_node_type"]
    assert head in types
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "no GPU worker node type"
    assert all(types[n]["max_workers"] >= 1 for n in gpu_types)
    assert types[head]["resources"].get("GPU", 0) == 0
    assert sum(types[n]["max_workers"] for n in gpu_types) >= cluster_config["max_workers"]


def test_cluster_launcher_installs_fusetune(cluster_config):
    mounts = cluster_config["file_mounts"]
    setup = " ".join(cluster_config["setup_commands"])
    installed = [remote for remote, local in mounts.items() if local == "." and remote in setup]
    assert installed and "pip install" in setup, "setup_commands must pip-install the synced checkout"


def test_cluster_launcher_ray_start_lines(cluster_config):
    head = [a for c in cluster_config["head_start_ray_commands"] for a in ray_start_args(c)]
    worker = [a for c in cluster_config["worker_start_ray_commands"] for a in ray_start_args(c)]
    assert len(head) == 1 and len(worker) == 1
    head_params, worker_params = parse_ray_start(head[0]), parse_ray_start(worker[0])
    assert head_params["head"] and head_params["dashboard_host"] == "127.0.0.1"
    assert head_params["num_cpus"] == 0  # no trials on the head
    assert worker_params["address"] == "$RAY_HEAD_IP:6379"


def test_cluster_launcher_documents_a_valid_search_command():
    commands = search_run_argv(CLUSTER_YAML.read_text())
    assert len(commands) >= 2  # the search and its --resume
    for argv in commands:
        given = check_search_command(argv)
        assert given["address"] == "auto"
        assert given["storage"].startswith(("s3://", "gs://"))
        assert given["gpus_per_trial"] > 0
    assert any(check_search_command(a).get("resume") for a in commands)
    submit = [ln for ln in CLUSTER_YAML.read_text().splitlines() if "ray job submit" in ln]
    assert submit and all("--address http://127.0.0.1:8265" in ln for ln in submit)


# ------------------------------------------------------------------------------------ KubeRay
@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(RAYJOB_YAML.read_text()) if d]
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    assert all({"apiVersion", "kind", "metadata"} <= set(d) for d in docs)
    return jobs[0]


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def test_rayjob_structure(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode")
    cluster = spec["rayClusterSpec"]
    assert _containers(cluster["headGroupSpec"])
    workers = cluster["workerGroupSpecs"]
    assert workers and all({"groupName", "rayStartParams", "template"} <= set(w) for w in workers)
    for w in workers:
        assert w.get("minReplicas", 0) <= w.get("replicas", 0) <= w.get("maxReplicas", 0)
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for w in workers for c in _containers(w)]
    assert any(gpus), "no worker group asks for a GPU"


def ray_start_params_args(params: dict[str, str]) -> list[str]:
    """KubeRay's ``rayStartParams`` as ``ray start`` arguments (a flag given as "true")."""
    from ray.scripts.scripts import start

    flags = {o.lstrip("-") for p in start.params if getattr(p, "is_flag", False) for o in p.opts}
    args = []
    for key, value in params.items():
        assert isinstance(value, str), f"rayStartParams.{key} must be a string (KubeRay's schema)"
        args += ([f"--{key}"] if value == "true" else []) if key in flags else [f"--{key}", value]
    return args


def test_rayjob_ray_start_params_are_ray_start_options(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        parse_ray_start(ray_start_params_args(group["rayStartParams"]))
    head = parse_ray_start(ray_start_params_args(cluster["headGroupSpec"]["rayStartParams"]))
    # the dashboard stays on the Pod's loopback; SidecarMode's submitter reaches it there
    assert head["dashboard_host"] == "127.0.0.1"
    assert rayjob["spec"]["submissionMode"] == "SidecarMode"


def test_rayjob_runs_a_valid_search_command(rayjob):
    argv = shlex.split(os.path.expandvars(rayjob["spec"]["entrypoint"]))
    assert argv[:3] == ["python", "-m", "search.run"]
    given = check_search_command(argv[3:])
    assert given["address"] == "auto"
    assert given["tracking_uri"] == "https://mlflow.example.org"  # expanded from the head's env
    assert "://" in given["storage"]
    assert given["max_failures"] >= 1


def test_rayjob_mlflow_credentials_come_from_a_secret(rayjob):
    head = _containers(rayjob["spec"]["rayClusterSpec"]["headGroupSpec"])[0]
    env = {e["name"]: e for e in head["env"]}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"]
    entry = rayjob["spec"]["entrypoint"].lower()
    assert "password" not in entry and "username" not in entry
    assert "env_vars" not in (rayjob["spec"].get("runtimeEnvYAML") or "")


def test_ray_versions_agree(rayjob, cluster_config):
    """The KubeRay cluster, its image and the launcher's image run one Ray version."""
    ray_version = rayjob["spec"]["rayClusterSpec"]["rayVersion"]
    base = re.search(r"^FROM rayproject/ray:(\S+)", RAY_DOCKERFILE.read_text(), re.M).group(1)
    launcher = cluster_config["docker"]["image"].split(":", 1)[1]
    assert base.split("-")[0] == launcher.split("-")[0] == ray_version


def test_ray_image_copies_what_exists():
    text = RAY_DOCKERFILE.read_text()
    sources = [w for line in re.findall(r"^COPY (.+)$", text, re.M)
               for w in line.split()[:-1] if not w.startswith("--")]
    assert sources and all((REPO / s).exists() for s in sources), sources
    ignore = (RAY_DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert all(f"!{s}" in ignore or f"!{s}/**" in ignore for s in sources)


# ------------------------------------------------------------------------ MLflow server compose
_VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$`` (enough for our file)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        got = env.get(name, "")
        if op == "?" and not got:
            raise KeyError(f"{name}: {arg}")
        return got or (arg if op == "-" else "")

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def compose_env_names() -> set[str]:
    return {m[0] for m in _VAR.findall(COMPOSE_YAML.read_text())}


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    """``env.example`` with every empty secret filled, as an operator would."""
    env = {}
    for line in (COMPOSE_DIR / "env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip() or f"filled-{key.strip().lower()}-0123456789"
    return env


def test_compose_services(example_env):
    compose = interpolate(yaml.safe_load(COMPOSE_YAML.read_text()), example_env)
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://") and "@postgres:" in mlflow["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    build = services["mlflow"]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).is_file()
    for svc in services.values():
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            assert not src.startswith(".") or (COMPOSE_DIR / src).is_file(), volume
    # the server image's entrypoint is the script tested below, with authentication on
    dockerfile = (COMPOSE_DIR / build["dockerfile"]).read_text()
    assert "entrypoint.sh" in dockerfile and "mlflow[auth]" in dockerfile and "psycopg2" in dockerfile
    assert "--app-name basic-auth" in (COMPOSE_DIR / "entrypoint.sh").read_text()


def test_compose_publishes_ports_on_loopback_only(example_env):
    compose = interpolate(yaml.safe_load(COMPOSE_YAML.read_text()), example_env)
    published = [p for svc in compose["services"].values() for p in svc.get("ports", [])]
    assert published
    assert all(str(p).startswith("127.0.0.1:") for p in published), published
    assert "ports" not in compose["services"]["postgres"]


def test_compose_secrets_are_required_and_never_committed(example_env):
    raw = yaml.safe_load(COMPOSE_YAML.read_text())
    for name, svc in raw["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key):
                assert "${" in str(value), f"{name}.{key} holds a literal value"
    # without the .env file the stack refuses to start
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD|POSTGRES_USER|MINIO|MLFLOW"):
        interpolate(raw, {})
    # every variable the file reads is documented in env.example, with no secret filled in
    example = (COMPOSE_DIR / "env.example").read_text()
    for name in compose_env_names():
        assert re.search(rf"^#? ?{name}=", example, re.M), f"{name} missing from env.example"
    for line in example.splitlines():
        if re.match(r"^\w*(PASSWORD|SECRET)\w*=", line):
            assert line.endswith("="), f"env.example fills a secret: {line}"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(COMPOSE_DIR / ".env")], cwd=REPO)
    assert ignored.returncode == 0, "infra/mlflow/.env must be git-ignored"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str, auth: str | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_mlflow_entrypoint_requires_authentication(tmp_path, monkeypatch):
    """infra/mlflow/entrypoint.sh for real: basic auth on, 127.0.0.1 by default, clients
    authenticate with MLflow's own environment variables."""
    pytest.importorskip("flask_wtf", reason="the basic-auth app needs mlflow[auth] (Flask-WTF)")
    port = _free_port()
    password = "admin-password-for-test"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path / 'tracking.db'}",
        MLFLOW_AUTH_DATABASE_URI=f"sqlite:///{tmp_path / 'auth.db'}",
        MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"),
        MLFLOW_AUTH_ADMIN_USERNAME="admin", MLFLOW_AUTH_ADMIN_PASSWORD=password,
        MLFLOW_FLASK_SERVER_SECRET_KEY="test-secret-key", MLFLOW_PORT=str(port),
        MLFLOW_WORKERS="1",  # quicker to start on a small machine
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(["sh", str(COMPOSE_DIR / "entrypoint.sh")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while _status_or_none(f"{base}/health") != 200:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        # bound to loopback only
        listening = subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True).stdout
        if listening.strip():
            assert all(" 127.0.0.1:" in f" {ln.split()[3]}" for ln in listening.splitlines()), listening
        api = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(api) == 401
        assert _status(api, "admin:wrong-password") == 401
        assert _status(api, f"admin:{password}") == 200

        import mlflow
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        client = MlflowClient(tracking_uri=base)
        exp = client.create_experiment("infra-test")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "x", 1.0)
        assert client.get_run(run.info.run_id).data.metrics == {"x": 1.0}
        assert mlflow.get_tracking_uri() != base  # nothing global was changed
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _status_or_none(url: str) -> int | None:
    try:
        return _status(url)
    except OSError:
        return None


# ------------------------------------------------------------------------ local cluster script
def _script(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LOCAL_CLUSTER), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_local_cluster_script_usage():
    assert subprocess.run(["bash", "-n", str(LOCAL_CLUSTER)]).returncode == 0
    assert "start" in _script("--help").stdout
    bad = _script("start", "--workers", "two")
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "--workers" in bad.stderr
    assert _script("frobnicate").returncode != 0


def test_local_cluster_start_status_stop(tmp_path):
    """Two real nodes, each with its own custom resource; stop ends every process it started."""
    state = tmp_path / "c"
    env = dict(os.environ, RAY_ADDRESS="")
    started = _script("start", "--workers", "1", "--dir", str(state), env=env)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        pids = [int(p.read_text()) for p in sorted(state.glob("node_*.pid"))]
        assert len(pids) == 2
        status = _script("status", "--dir", str(state), env=env)
        assert status.returncode == 0 and status.stdout.count("running") == 2
        address = _script("address", "--dir", str(state), env=env).stdout.strip()
        probe = subprocess.run(
            [sys.executable, "-c",
             "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
             "r = ray.cluster_resources(); print(int(r.get('node_0', 0)), int(r.get('node_1', 0)), int(r['CPU']))",
             address],
            capture_output=True, text=True, timeout=120, env=dict(env, RAY_AUTH_MODE="token"),
        )
        assert probe.stdout.split() == ["1", "1", "2"], probe.stderr[-2000:]
        again = _script("start", "--dir", str(state), env=env)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        stopped = _script("stop", "--dir", str(state), env=env)
    assert stopped.returncode == 0, stopped.stderr
    for pid in pids:
        assert not _alive(pid)
    assert _script("status", "--dir", str(state), env=env).returncode == 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
