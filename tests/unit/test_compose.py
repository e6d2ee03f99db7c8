"""The production profile's compose file (docker/compose.yaml), validated without Docker.

The project machine has no Docker daemon, so the stack is never started here. These tests read
the compose file as YAML, interpolate it the way compose does, and check what a reviewer would:
the services and their commands, loopback-only ports, no literal secret anywhere (every secret is
a required ``${VAR:?...}`` reference, filled from docker/.env, which git ignores), one afterbell
image built from docker/Dockerfile, depends_on and healthchecks, and that every variable it sets
is one the code (afterbell, Airflow, MLflow) actually reads. ``docker compose config`` runs too
when the compose plugin is installed.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines import airflow_env, settings, sources, tuning
from pipelines.lake_sync import LakeStoreConfig
from pipelines.settings import REPO_ROOT, Settings
from tests.services import S3Endpoint, s3_server  # noqa: F401 (fixture)

DOCKER = REPO_ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"

#: Services of the production profile and a fragment each one's command must contain.
COMMANDS = {
    "postgres-init": "CREATE DATABASE",
    "s3-init": "create_bucket",
    "mlflow": "mlflow server --app-name basic-auth",
    "airflow-init": "airflow db migrate",
    "airflow-api-server": "airflow api-server",
    "airflow-scheduler": "airflow scheduler",
    "airflow-dag-processor": "airflow dag-processor",
    "airflow-triggerer": "airflow triggerer",
    "airflow-worker": "airflow celery worker",
    "serving": "afterbell serve",
}
ENGINES = ("postgres", "redis", "s3")
AIRFLOW = tuple(name for name in COMMANDS if name.startswith("airflow-"))
#: Services that run afterbell's code (DAG parsing, tasks, the serving app).
CODE_RUNS = (*AIRFLOW, "serving")

#: Variable names that hold secrets (file paths and user names do not).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|ACCESS_KEY|_KEY$|REDISCLI_AUTH")
NOT_SECRET_NAME = re.compile(r"(_FILE|_PATH|_USERNAME|_USER)$")
#: A required reference as the whole value: ``${NAME:?message}``.
REQUIRED_REF = re.compile(r"\$\{[A-Z_][A-Z0-9_]*:\?[^}]+\}")

#: Keys of the Compose Specification this file may use (a typo such as `depend_on` fails).
TOP_KEYS = {"name", "services", "volumes", "networks", "secrets", "configs"}
SERVICE_KEYS = {
    "image", "build", "command", "entrypoint", "environment", "ports", "volumes", "depends_on",
    "healthcheck", "restart", "stop_grace_period", "deploy", "user", "working_dir", "networks",
    "read_only", "tmpfs", "shm_size", "ulimits", "labels", "logging", "pull_policy", "init",
}
BUILD_KEYS = {"context", "dockerfile", "args", "target", "tags"}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval",
                    "disable"}

#: Options of the Celery provider (not installed in the embedded venv, so not readable here).
CELERY_OPTIONS = {"broker_url", "result_backend", "worker_concurrency"}


# ------------------------------------------------------------------------------ helpers
class MissingVariable(Exception):
    """A ``${VAR:?message}`` whose variable is unset or empty: compose refuses to start."""


_TOKEN = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one string (``$$``, ``$V``, ``${V}``, ``:-``, ``-``, ``:?``)."""

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise MissingVariable(f"{name}: {arg}")
        if op == ":-" and not value:
            return arg
        if op == "-" and value is None:
            return arg
        if op in (":+", "+"):
            return arg if value else ""
        return value or ""

    return _TOKEN.sub(sub, text)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    return node


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)


def references(text: str) -> Iterator[tuple[str, str | None]]:
    """``(name, operator)`` of every variable reference in ``text`` (``$$`` escapes skipped)."""
    for m in _TOKEN.finditer(text):
        if not m.group("escaped"):
            yield m.group("name") or m.group("bare"), m.group("op")


def command_text(service: Mapping[str, Any]) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def env_example() -> dict[str, str]:
    """The uncommented ``KEY=VALUE`` lines of docker/.env.example."""
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not a KEY=VALUE line: {line!r}"
            out[key.strip()] = value.strip()
    return out


def compose_text() -> str:
    """Every string value of the compose file (its comments left out), one a line."""
    return "\n".join(strings(yaml.safe_load(COMPOSE.read_text())))


def required_variables(text: str) -> set[str]:
    return {name for name, op in references(text) if op in (":?", "?")}


def masked(text: str) -> str:
    """``text`` with each required reference to a secret as ``SECRETREF``, any other as ``REF``."""

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$$"
        name = m.group("name") or m.group("bare")
        return "SECRETREF" if is_secret(name) and m.group("op") == ":?" else "REF"

    return _TOKEN.sub(sub, text)


def is_secret(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not NOT_SECRET_NAME.search(name)


def dummy_env() -> dict[str, str]:
    """Every required variable set to a URL-safe stand-in (what a filled-in docker/.env holds)."""
    return {name: f"x{name.lower().replace('_', '')}0" for name in
            required_variables(compose_text())}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


@pytest.fixture(scope="module")
def services(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services with every variable interpolated (stand-ins for the secrets)."""
    return resolve(raw["services"], dummy_env())


# ------------------------------------------------------------------------------ structure
def test_compose_keys(raw: dict[str, Any]) -> None:
    assert {k for k in raw if not k.startswith("x-")} <= TOP_KEYS
    assert raw["name"] == "afterbell"
    for name, s in raw["services"].items():
        assert set(s) <= SERVICE_KEYS, f"{name}: unknown keys {set(s) - SERVICE_KEYS}"
        assert set(s.get("build") or {}) <= BUILD_KEYS, name
        assert set(s.get("healthcheck") or {}) <= HEALTHCHECK_KEYS, name
        for volume in s.get("volumes", []):
            source = str(volume).split(":")[0]
            assert source in raw["volumes"], f"{name}: {source} is not a named volume"


def test_services_and_their_commands(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == set(COMMANDS) | set(ENGINES)
    for name, fragment in COMMANDS.items():
        assert fragment in " ".join(command_text(services[name]).split()), name
    # the one-shot services run once and are waited for; the others restart
    for name in ("postgres-init", "s3-init", "airflow-init"):
        assert services[name].get("restart") == "no", name
    for name in set(services) - {"postgres-init", "s3-init", "airflow-init"}:
        assert services[name].get("restart") == "unless-stopped", name


def test_one_afterbell_image_built_from_docker_dockerfile(
    raw: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    built = {name: s for name, s in services.items() if "build" in s}
    assert set(built) == set(COMMANDS) - {"postgres-init"}
    assert len({s["image"] for s in built.values()}) == 1, "one afterbell image"
    for name, s in built.items():
        build = s["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO_ROOT, name
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE.resolve(), name
    # third-party images: pinned, never `latest`
    for name, s in services.items():
        if name not in built:
            image = s["image"]
            assert ":" in image and not image.endswith(":latest"), (name, image)
    assert raw["services"]["postgres"]["image"] == raw["services"]["postgres-init"]["image"]


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text().replace("\\\n", " ")  # continuation lines joined
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "-r requirements/lock.txt" in text
    assert "download.pytorch.org/whl/cpu" in text
    assert re.search(r"pip install --no-deps \.(\s|$)", text)
    assert re.search(r"^ENV[^\n]*AFTERBELL_PROFILE=production", text, re.M)
    assert re.search(r"^USER (?!root)\w+", text, re.M), "the image runs as a non-root user"
    # no secret baked in: no ENV/ARG with a secret-looking name
    for m in re.finditer(r"^(?:ENV|ARG)\s+(.+?)$", text, re.M):
        for name in re.findall(r"([A-Z_][A-Z0-9_]*)=", m.group(1)):
            assert not is_secret(name), name
    # every path the Dockerfile copies exists in the checkout
    for m in re.finditer(r"^COPY\s+(.+)\s+\S+$", text, re.M):
        for src in m.group(1).split():
            assert (REPO_ROOT / src).exists(), src


def test_every_published_port_binds_loopback(services: dict[str, dict[str, Any]]) -> None:
    published = 0
    for name, s in services.items():
        for port in s.get("ports", []):
            published += 1
            if isinstance(port, dict):  # long syntax
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)
                assert str(port).count(":") == 2, (name, port)
    assert published >= 3  # at least the Airflow UI, MLflow and the serving app
    for name in ("airflow-worker", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer"):
        assert "ports" not in services[name], f"{name} publishes nothing (and scales)"


# ------------------------------------------------------------------------------ secrets
def test_secrets_are_required_references(raw: dict[str, Any]) -> None:
    text = compose_text()
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if is_secret(key):
                assert REQUIRED_REF.fullmatch(value), (
                    f"{name}: {key} must be a required ${{VAR:?...}} reference, got {value!r}")
    # every reference to a secret variable is required (`:?`), never defaulted
    for var, op in references(text):
        if is_secret(var):
            assert op == ":?", f"{var} is referenced with {op!r}: secrets have no default"
    # credentials inside URLs and connection strings are references too
    credentials = 0
    for value in strings(raw):
        for m in re.finditer(r"://[^/@\s]*:([^@\s/]*)@|password=([^,\s]*)", masked(value)):
            credentials += 1
            assert (m.group(1) or m.group(2)) == "SECRETREF", value
    assert credentials >= 3  # the Celery broker URL and Feast's Redis connection strings
    # PostgreSQL URLs carry no password at all: libpq reads PGPASSWORD in each client
    for name, service in raw["services"].items():
        env = environment(service)
        urls = [v for v in strings(service) if "postgresql" in v and "://" in v]
        for url in urls:
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", masked(url)), (name, url)
        if urls:
            assert REQUIRED_REF.fullmatch(env.get("PGPASSWORD", "")), f"{name}: no PGPASSWORD"
    assert all("env_file" not in s for s in raw["services"].values()), (
        "secrets are interpolated per service, not blanket-injected")


def test_compose_refuses_to_start_without_the_secrets(raw: dict[str, Any]) -> None:
    full = dummy_env()
    resolve(raw, full)  # everything interpolates once every secret is set
    secrets = {name for name in full if is_secret(name)}
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "S3_SECRET_KEY", "MLFLOW_ADMIN_PASSWORD",
            "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY",
            "AFTERBELL_SERVE_TOKEN"} <= secrets
    for name in sorted(full):
        for missing in ({k: v for k, v in full.items() if k != name}, {**full, name: ""}):
            with pytest.raises(MissingVariable, match=name):
                resolve(raw, missing)


def test_env_example_has_placeholders_only() -> None:
    example = env_example()
    required = required_variables(compose_text())
    assert required <= set(example), f"missing in .env.example: {sorted(required - set(example))}"
    for key, value in example.items():
        # empty: compose refuses to start until a real value is filled in
        assert value == "", f".env.example holds a value for {key}"
    # the commented-out knobs are names the compose file reads
    text = compose_text()
    referenced = {name for name, _ in references(text)}
    for m in re.finditer(r"^#\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M):
        assert m.group(1) in referenced, m.group(1)


def test_env_file_is_ignored_and_never_in_the_image() -> None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot ask git whether docker/.env is ignored")
    for path in ("docker/.env", ".env"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT,
                                 check=False)
        assert ignored.returncode == 0, f"{path} is not git-ignored"
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", path], cwd=REPO_ROOT,
                                 capture_output=True, check=False)
        assert tracked.returncode != 0, f"{path} is tracked by git"
    patterns = (REPO_ROOT / ".dockerignore").read_text().split()
    assert "**/.env" in patterns and ".git" in patterns and ".venv" in patterns


def test_no_python_package_in_docker_or_mlflow() -> None:
    # an __init__.py in docker/ would shadow the `docker` library, in mlflow/ the `mlflow` one
    for folder in ("docker", "mlflow"):
        assert not list((REPO_ROOT / folder).rglob("__init__.py")), folder


# ------------------------------------------------------------------------------ wiring
def test_depends_on_and_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    long_running = {n for n, s in services.items() if s.get("restart") != "no"}
    for name in long_running:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    graph: dict[str, set[str]] = {}
    for name, s in services.items():
        deps = s.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        graph[name] = set(deps)
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert dep in long_running, (name, dep)
            else:
                assert condition == "service_completed_successfully", (name, dep)
                assert dep not in long_running, (name, dep)
    # no cycle
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"depends_on cycle: {' -> '.join((*path, node))}"
        if node not in done:
            for dep in graph[node]:
                visit(dep, (*path, node))
            done.add(node)

    for node in graph:
        visit(node, ())
    # every Airflow component waits for the migration, the workers for MLflow too
    for name in AIRFLOW:
        if name != "airflow-init":
            assert "airflow-init" in graph[name], name
    assert "mlflow" in graph["airflow-worker"] and "mlflow" in graph["serving"]


def _documented_afterbell_names() -> set[str]:
    """AFTERBELL_* names the code reads: settings' documentation and source, and the constants
    of the modules that read the environment themselves."""
    names = set(re.findall(r"AFTERBELL_[A-Z0-9_]+", settings.__doc__ or ""))
    names |= set(re.findall(r"\"(AFTERBELL_[A-Z0-9_]+)\"", inspect.getsource(settings)))
    names |= {tuning.STORAGE_ENV, sources.ENV_S3_ENDPOINT_URL, sources.ENV_S3_BUCKET,
              sources.ENV_S3_PREFIX, airflow_env.RETRIES_ENV}
    return names


def test_afterbell_variables_are_ones_the_code_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    known = _documented_afterbell_names()
    for name, service in services.items():
        unknown = {k for k in environment(service) if k.startswith("AFTERBELL_")} - known
        assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"
    for name in CODE_RUNS:
        env = environment(services[name])
        assert env["AFTERBELL_PROFILE"] == "production", name
        # the settings the code builds from this environment
        s = Settings.from_env(env)
        assert s.profile == "production"
        assert s.feast_yaml.name == "feature_store.production.yaml"
        assert s.tracking_uri == "http://mlflow:5000"
        assert s.feast_registry_url.startswith("postgresql+psycopg://")
        assert s.feast_registry_url.endswith("@postgres:5432/afterbell_feast")
        host, _, options = s.redis_url.partition(",")
        assert host == "redis:6379" and "://" not in s.redis_url, "Feast's format, no URL"
        assert "db=1" in options.split(",")
    serving = Settings.from_env(environment(services["serving"]))
    assert serving.serve_token, "the serving app requires a bearer token"
    assert serving.serve_follow, "the long-running app follows the NYSE clock"
    worker = environment(services["airflow-worker"])
    assert tuning.study_storage(Settings.from_env(worker), worker).endswith(
        "@postgres:5432/afterbell_optuna")
    s3 = sources.S3Config.from_env(worker)
    assert s3.endpoint_url == "http://s3:9000" and s3.bucket
    # every Airflow component (the workers run the stages) syncs the lake with the bucket
    for name in AIRFLOW:
        lake_store = LakeStoreConfig.from_settings(
            Settings.from_env(environment(services[name])), environment(services[name]))
        assert lake_store.url == "s3://afterbell-lake/lake", name
        assert lake_store.endpoint_url == "http://s3:9000", name


def test_s3_init_creates_every_bucket_the_code_uses(
    raw: dict[str, Any], s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """s3-init's script, run against moto with its own environment, creates the raw-drop, MLflow
    artifact and lake buckets: the lake bucket being the one of AFTERBELL_LAKE_URL (also when
    LAKE_BUCKET renames it)."""
    client = s3_server.client()
    for lake_bucket in (None, f"lake-{uuid.uuid4().hex[:8]}"):
        env = dummy_env() if lake_bucket is None else {**dummy_env(), "LAKE_BUCKET": lake_bucket}
        services = resolve(raw["services"], env)
        init = services["s3-init"]
        script = init["command"][-1]
        assert init["command"][:2] == ["python", "-c"]
        init_env = environment(init)
        worker = environment(services["airflow-worker"])
        assert init_env["AFTERBELL_LAKE_URL"] == worker["AFTERBELL_LAKE_URL"]
        assert init_env["AFTERBELL_S3_ENDPOINT_URL"] == worker["AFTERBELL_S3_ENDPOINT_URL"]
        with monkeypatch.context() as mp:
            for key, value in {**init_env, **s3_server.env}.items():
                mp.setenv(key, value)
            mp.setenv("AFTERBELL_S3_ENDPOINT_URL", s3_server.url)  # moto in place of MinIO
            exec(compile(script, "s3-init", "exec"), {})  # the compose file's own script
        have = {b["Name"] for b in client.list_buckets()["Buckets"]}
        lake = LakeStoreConfig.from_settings(Settings.from_env(worker), worker)
        assert lake.bucket == (lake_bucket or "afterbell-lake")
        assert {lake.bucket, init_env["AFTERBELL_S3_BUCKET"], init_env["ARTIFACTS_BUCKET"]} <= have
        assert f"s3-init: bucket {lake.bucket} ready" in capsys.readouterr().out


def _airflow_options() -> dict[str, set[str]]:
    """Options of the installed Airflow core, read from its config template (no import)."""
    spec = importlib.util.find_spec("airflow")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "config_templates" / "config.yml"
    template = yaml.safe_load(path.read_text())
    options = {section: set(body["options"]) for section, body in template.items()}
    options.setdefault("celery", set()).update(CELERY_OPTIONS)
    return options


def test_airflow_configuration(services: dict[str, dict[str, Any]]) -> None:
    options = _airflow_options()
    first = environment(services["airflow-api-server"])
    for name in AIRFLOW:
        env = environment(services[name])
        for key in env:
            if key.startswith("AIRFLOW__"):
                section, _, option = key[len("AIRFLOW__"):].lower().partition("__")
                assert option in options.get(section, ()), f"{name}: unknown Airflow option {key}"
        # one configuration for every component (the JWT secret above all)
        assert {k: v for k, v in env.items() if k.startswith("AIRFLOW__")} == {
            k: v for k, v in first.items() if k.startswith("AIRFLOW__")}, name
    env = first
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:")
    assert env["AIRFLOW__CELERY__BROKER_URL"].endswith("@redis:6379/0")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql")
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"):
        assert env[key].startswith("postgresql+psycopg://") and env[key].endswith("/airflow")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        "http://airflow-api-server:8080/execution/")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/afterbell/dags"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    # login required: no all-admins shortcut, a password file written by airflow-init
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert "AIRFLOW__CORE__AUTH_MANAGER" not in env or "all_admins" not in env[
        "AIRFLOW__CORE__AUTH_MANAGER"].lower()
    auth_file = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    for name in ("airflow-init", "airflow-api-server"):
        mounts = [str(v).split(":")[1] for v in services[name]["volumes"]]
        assert str(Path(auth_file).parent) in mounts, name
    init = services["airflow-init"]
    assert "AIRFLOW_ADMIN_PASSWORD" in environment(init)
    assert "AIRFLOW_ADMIN_PASSWORD" not in environment(services["airflow-api-server"])
    assert "airflow pools set training" in command_text(init)
    assert "airflow pools set serving" in command_text(init)


def test_pool_defaults_match_afterbell_toml() -> None:
    from pipelines.schedule import load_config

    pools = load_config().pools
    text = COMPOSE.read_text()
    assert f"${{AIRFLOW_TRAINING_POOL_SLOTS:-{pools.training_slots}}}" in text
    assert f"${{AIRFLOW_SERVING_POOL_SLOTS:-{pools.serving_slots}}}" in text


def _mlflow_variables() -> set[str]:
    """MLFLOW_* names MLflow reads: its environment variables and its CLI options' envvars."""
    spec = importlib.util.find_spec("mlflow")
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    text = (root / "environment_variables.py").read_text()
    text += (root / "cli" / "__init__.py").read_text()
    return set(re.findall(r"\"(MLFLOW_[A-Z0-9_]+)\"", text))


def test_mlflow_server_behind_auth(services: dict[str, dict[str, Any]]) -> None:
    known = _mlflow_variables()
    for name, s in services.items():
        unknown = {k for k in environment(s) if k.startswith("MLFLOW_")} - known
        assert not unknown, f"{name} sets MLFLOW_ variables MLflow does not read: {unknown}"
    mlflow = services["mlflow"]
    env, cmd = environment(mlflow), " ".join(command_text(mlflow).split())
    assert "--app-name basic-auth" in cmd and "--serve-artifacts" in cmd
    assert "--host 0.0.0.0" in cmd  # inside the project network; published on 127.0.0.1
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://s3:9000"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] and env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert "postgres" in env["AUTH_DATABASE_URI"], "the users live in PostgreSQL, not SQLite"
    # passwords stay off the command line (visible in `ps` and `docker inspect`)
    assert "postgresql" not in cmd
    # every client of the server authenticates
    for name in ("serving", *AIRFLOW):
        client = environment(services[name])
        assert client["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"], name


def test_servers_listen_inside_the_network_only(services: dict[str, dict[str, Any]]) -> None:
    # bound to 0.0.0.0 in their containers so that the other services reach them; the host
    # sees them on 127.0.0.1 only (test_every_published_port_binds_loopback)
    assert "--host 0.0.0.0" in command_text(services["serving"])
    assert "--host 0.0.0.0" in command_text(services["airflow-api-server"])
    assert all(str(p).startswith("127.0.0.1:") for p in services["serving"]["ports"])


# ------------------------------------------------------------------------------ docker itself
def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def test_docker_compose_config(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no `docker compose` plugin nor docker-compose on this machine: the file is "
                    "validated by the tests above only")
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in dummy_env().items()))
    proc = subprocess.run([*cli, "--env-file", str(env_file), "-f", str(COMPOSE), "config",
                           "--quiet"], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # and it refuses to start without the secrets
    empty = tmp_path / "empty"
    empty.write_text("")
    proc = subprocess.run([*cli, "--env-file", str(empty), "-f", str(COMPOSE), "config",
                           "--quiet"], capture_output=True, text=True, check=False, timeout=120,
                          env={"PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert proc.returncode != 0 and "POSTGRES_PASSWORD" in proc.stderr + proc.stdout
