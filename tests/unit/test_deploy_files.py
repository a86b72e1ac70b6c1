"""The deployment files under docker/ agree with each other and with the project.

No Docker engine or cluster here: the files are parsed and cross-checked (the image's user,
config path and entrypoint; compose's services, mounts and secrets; the CronJob's deadline
against the watchdog), the configs they ship are validated with the project's own loader, and
the two shell scripts are run for real with stubs in place of ``invoicesync`` and ``dovecot``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from invoicesync.config import Settings, load_settings
from tests.conftest import ROOT

DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
COMPOSE = DOCKER / "compose.yml"
COMPOSE_CONFIG = DOCKER / "config" / "invoicesync.toml"
K8S = DOCKER / "k8s"
DOVECOT = DOCKER / "dovecot"
SEED_MAILBOX = ROOT / "examples" / "mailbox"
DATA_DIR = PurePosixPath("/var/lib/invoicesync")
IMAGE_UID = 10001

# --------------------------------------------------------------------------------- helpers


def _yaml(path: Path) -> dict[str, Any]:
    (document,) = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert isinstance(document, dict), path
    return document


def _dockerfile(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of a Dockerfile as (INSTRUCTION, arguments), one list per stage."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    stages: list[list[tuple[str, str]]] = [[]]  # stage 0: the ARGs before the first FROM
    for line in logical:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages


def _args(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [rest for word, rest in stage if word == instruction]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in _args(stage, "ENV"):
        for item in shlex.split(rest):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def _copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of the stage's COPY instructions from the build context."""
    copies = []
    for rest in _args(stage, "COPY"):
        words = shlex.split(rest)
        if any(word.startswith("--from=") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        copies.append((paths[:-1], paths[-1]))
    return copies


def _validate(
    text: str, tmp_path: Path, secrets: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Load a shipped config with ``load_settings``, its secret files in a temporary dir."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name, value in secrets.items():
        (secrets_dir / name).write_text(value, encoding="utf-8")
    monkeypatch.setenv("INVOICESYNC_SECRETS_DIR", str(secrets_dir))
    path = tmp_path / "invoicesync.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path)


def _image_config_path() -> PurePosixPath:
    return PurePosixPath(_env(_dockerfile(DOCKERFILE)[-1])["INVOICESYNC_CONFIG"])


def _compose() -> dict[str, Any]:
    return _yaml(COMPOSE)


def _compose_mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, options) of a compose service's short-syntax volumes."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        mounts.append((source, target, ":".join(options)))
    return mounts


def _compose_secrets(service: dict[str, Any]) -> dict[str, str]:
    """Secret file name under /run/secrets -> the content of the host file compose mounts."""
    declared = _compose()["secrets"]
    files = {}
    for entry in service.get("secrets", []):
        name, target = (
            (entry, entry)
            if isinstance(entry, str)
            else (entry["source"], entry.get("target", entry["source"]))
        )
        files[target] = (DOCKER / declared[name]["file"]).read_text(encoding="utf-8")
    return files


def _cronjob(name: str = "cronjob.yaml") -> dict[str, Any]:
    return _yaml(K8S / name)


CRONJOBS = pytest.mark.parametrize("cronjob_file", ["cronjob.yaml", "workers.yaml"])


def _pod(cronjob: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pod


def _configmap_toml() -> str:
    configmap = _yaml(K8S / "configmap.yaml")
    text: str = configmap["data"][_configmap_item()["key"]]
    return text


def _configmap_item() -> dict[str, str]:
    (volume,) = [v for v in _pod(_cronjob())["volumes"] if "configMap" in v]
    (item,) = volume["configMap"]["items"]
    return dict(item)


def _secret_items() -> dict[str, str]:
    """File name under the Secret volume -> its example value."""
    pod = _pod(_cronjob())
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    data = _yaml(K8S / "secret.example.yaml")["stringData"]
    return {item["path"]: data[item["key"]] for item in volume["secret"]["items"]}


def _minutes_between_runs(schedule: str) -> int:
    minute = schedule.split()[0]
    match = re.fullmatch(r"\*/(\d+)", minute)
    assert match, f"expected a */N minute field, got {schedule!r}"
    return int(match.group(1))


# ---------------------------------------------------------------------------- all the YAML


@pytest.mark.parametrize(
    "path", sorted(DOCKER.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(DOCKER))
)
def test_yaml_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert documents
    if path.parent == K8S:
        for document in documents:
            assert {"apiVersion", "kind", "metadata"} <= document.keys(), path
            assert document["metadata"]["name"]


# ------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_stages_use_python_312_slim() -> None:
    preamble, *stages = _dockerfile(DOCKERFILE)
    assert len(stages) >= 2, "expected a builder stage and a final stage"
    defaults = dict(rest.split("=", 1) for rest in _args(preamble, "ARG") if "=" in rest)
    for stage in stages:
        (image,) = _args(stage, "FROM")
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image.split()[0])
        assert image.startswith("python:3.12-slim"), image


def test_final_stage_runs_as_uid_10001_with_entrypoint_and_run() -> None:
    final = _dockerfile(DOCKERFILE)[-1]
    users = _args(final, "USER")
    assert users, "the final stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user == str(IMAGE_UID)
    assert json.loads(_args(final, "ENTRYPOINT")[-1]) == ["/usr/local/bin/docker-entrypoint.sh"]
    assert json.loads(_args(final, "CMD")[-1]) == ["run"]
    env = _env(final)
    assert env["INVOICESYNC_CONFIG"] == "/etc/invoicesync/invoicesync.toml"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env.get("PIP_NO_CACHE_DIR") in {"1", "off", "true"}
    assert str(DATA_DIR) in json.loads(_args(final, "VOLUME")[-1])
    assert "9108" in " ".join(_args(final, "EXPOSE")).split()
    assert not _args(final, "HEALTHCHECK"), "a batch job has no useful HEALTHCHECK"


def test_final_stage_installs_the_entrypoint_script() -> None:
    final = _dockerfile(DOCKERFILE)[-1]
    entrypoint = json.loads(_args(final, "ENTRYPOINT")[-1])[0]
    destinations = {dest: sources for sources, dest in _copies(final)}
    assert destinations[entrypoint] == [str(ENTRYPOINT.relative_to(ROOT))]


def test_dockerfile_copies_exist_and_pass_the_dockerignore() -> None:
    """Everything copied from the context exists and is allow-listed in the ignore file."""
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, "the ignore file is an allow-list: it starts by excluding everything"
    for stage in _dockerfile(DOCKERFILE)[1:]:
        for sources, _ in _copies(stage):
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is excluded from the context"


def test_entrypoint_is_an_executable_posix_script() -> None:
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR, "chmod +x docker/entrypoint.sh"
    assert ENTRYPOINT.read_text(encoding="utf-8").startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)


@pytest.mark.parametrize("script", [ENTRYPOINT, DOVECOT / "start.sh"], ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: apt-get install -y shellcheck")
    subprocess.run(["shellcheck", "--shell=sh", str(script)], check=True)


# ------------------------------------------------------------------------ entrypoint script

STUB = """#!/bin/sh
echo "pid=$$"
for arg; do echo "arg=$arg"; done
exit "${STUB_EXIT:-0}"
"""


@pytest.fixture
def stub_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH finds a stub ``invoicesync``, and an existing config file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "invoicesync"
    stub.write_text(STUB, encoding="utf-8")
    stub.chmod(0o755)
    config = tmp_path / "invoicesync.toml"
    config.write_text("", encoding="utf-8")
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "INVOICESYNC_CONFIG": str(config)}


def _entrypoint(
    args: list[str], env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], int]:
    process = subprocess.Popen(
        [str(ENTRYPOINT), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=10)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr), process.pid


def _stub_args(stdout: str) -> list[str]:
    return [line.removeprefix("arg=") for line in stdout.splitlines() if line.startswith("arg=")]


def test_entrypoint_passes_arguments_through_unchanged(stub_env: dict[str, str]) -> None:
    args = ["--log-format", "json", "schedule", "--every", "5m", "two words", ""]
    result, _ = _entrypoint(args, stub_env)
    assert result.returncode == 0, result.stderr
    assert _stub_args(result.stdout) == args
    assert result.stderr == ""


@pytest.mark.parametrize("code", [0, 1, 3, 4])
def test_entrypoint_propagates_the_exit_code(stub_env: dict[str, str], code: int) -> None:
    result, _ = _entrypoint(["run"], {**stub_env, "STUB_EXIT": str(code)})
    assert result.returncode == code


def test_entrypoint_execs_the_cli_in_its_own_process(stub_env: dict[str, str]) -> None:
    """No shell stays in between: the CLI has the PID that docker or the kubelet signals."""
    result, pid = _entrypoint(["run"], stub_env)
    assert result.stdout.splitlines()[0] == f"pid={pid}"


def test_sigterm_reaches_the_cli(tmp_path: Path, stub_env: dict[str, str]) -> None:
    stub = tmp_path / "bin" / "invoicesync"
    stub.write_text(
        "#!/bin/sh\ntrap 'echo got TERM; exit 143' TERM\necho ready\n"
        "while :; do sleep 0.05; done\n",
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [str(ENTRYPOINT), "schedule"], env=stub_env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 143
        assert process.stdout.read() == "got TERM\n"
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_entrypoint_missing_config_is_one_line_and_exit_2(
    tmp_path: Path, stub_env: dict[str, str]
) -> None:
    missing = tmp_path / "nowhere" / "invoicesync.toml"
    result, _ = _entrypoint(["run"], {**stub_env, "INVOICESYNC_CONFIG": str(missing)})
    assert result.returncode == 2
    assert result.stdout == "", "the CLI must not start"
    (line,) = result.stderr.splitlines()
    assert str(missing) in line


def test_entrypoint_leaves_an_explicit_config_to_the_cli(
    tmp_path: Path, stub_env: dict[str, str]
) -> None:
    env = {**stub_env, "INVOICESYNC_CONFIG": str(tmp_path / "missing.toml")}
    for args in (["--config", "/elsewhere.toml", "run"], ["--config=/x.toml", "status"], ["-h"]):
        result, _ = _entrypoint(args, env)
        assert result.returncode == 0, (args, result.stderr)
        assert _stub_args(result.stdout) == args


def test_entrypoint_runs_other_commands_as_given(stub_env: dict[str, str]) -> None:
    """``docker run <image> sh -c …`` runs that command (no config needed, no CLI)."""
    env = {**stub_env, "INVOICESYNC_CONFIG": "/nonexistent.toml"}
    result, pid = _entrypoint(["sh", "-c", 'echo "shell $$"'], env)
    assert (result.returncode, result.stdout) == (0, f"shell {pid}\n")


def test_entrypoint_knows_every_cli_subcommand() -> None:
    """A new subcommand must be added to the entrypoint, else it would be run as a program."""
    help_text = subprocess.run(
        [sys.executable, "-m", "invoicesync", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    usage = re.search(r"\{([\w,-]+)\}\s+\.\.\.", help_text)  # {run,schedule,…} ...
    assert usage, help_text
    commands = set(usage.group(1).split(","))
    script = ENTRYPOINT.read_text(encoding="utf-8")
    case = re.search(r'^\s*"" \| -\* \|(.*)\) ;;$', script, re.MULTILINE)
    assert case, "the case pattern for invoicesync commands was not found"
    known = {word.strip() for word in case.group(1).split("|")}
    assert commands <= known, f"add {sorted(commands - known)} to docker/entrypoint.sh"


# --------------------------------------------------------------------------------- compose


def test_compose_depends_on_existing_services() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    depends = services["invoicesync"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_compose_mounts_secrets_and_builds_exist() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for source, target, _ in _compose_mounts(service):
            assert target.startswith("/"), (name, target)
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: host path {source} is missing"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        for entry in service.get("secrets", []):
            assert entry in compose["secrets"], f"{name}: undeclared secret {entry}"
        if "build" in service:
            context = DOCKER / service["build"]["context"]
            dockerfile = context / service["build"].get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), dockerfile
            for stage in _dockerfile(dockerfile)[1:]:
                for sources, _ in _copies(stage):
                    for source in sources:
                        assert (context / source).exists(), f"{dockerfile}: COPY {source}"
    for secret in compose["secrets"].values():
        assert (DOCKER / secret["file"]).is_file(), secret["file"]


def test_compose_runs_invoicesync_as_specified() -> None:
    compose = _compose()
    service = compose["services"]["invoicesync"]
    assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert service["command"] == ["schedule", "--every", "5m"]
    mounts = {target: (source, options) for source, target, options in _compose_mounts(service)}
    assert mounts[str(_image_config_path())] == ("./config/invoicesync.toml", "ro")
    assert (DOCKER / "config" / "invoicesync.toml").resolve() == COMPOSE_CONFIG
    assert mounts[str(DATA_DIR)][0] in compose["volumes"], "the data must be on a named volume"
    assert any(str(port).endswith(":9108") for port in service["ports"])
    assert compose["services"]["pushgateway"]["profiles"] == ["pushgateway"]


def test_compose_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compose = _compose()
    service = compose["services"]["invoicesync"]
    text = COMPOSE_CONFIG.read_text(encoding="utf-8")
    settings = _validate(text, tmp_path, _compose_secrets(service), monkeypatch)

    assert settings.database.url.startswith("postgresql+psycopg://")
    assert "@postgres:" in settings.database.url
    for path in (settings.storage.dir, settings.storage.tokens_dir):
        assert DATA_DIR in PurePosixPath(path).parents, f"{path} is not on the data volume"
    (account,) = settings.accounts
    imap = compose["services"][account.imap_host or ""]
    assert account.username == imap["environment"]["IMAP_USER"]
    assert account.password is not None
    assert (account.security, account.allow_insecure) == ("none", True)
    listener = re.search(r"inet_listener imap \{\s*port = (\d+)", _dovecot_conf())
    assert listener and account.port == int(listener.group(1))
    # The same secret is the dovecot user's password and the account's password file.
    assert PurePosixPath(imap["environment"]["IMAP_PASSWORD_FILE"]).name in imap["secrets"]
    assert str(account.password_file) in service["secrets"]

    assert settings.logging.format == "json"
    assert settings.schedule.every == service["command"][service["command"].index("--every") + 1]
    assert settings.metrics.port == 9108
    assert settings.metrics.address == "0.0.0.0", "/metrics must listen beyond the container"
    assert any(str(port).endswith(f":{settings.metrics.port}") for port in service["ports"])


# ----------------------------------------------------------------------------------- dovecot


def _dovecot_conf() -> str:
    return (DOVECOT / "dovecot.conf").read_text(encoding="utf-8")


def test_dovecot_config_parses() -> None:
    doveconf = shutil.which("doveconf")
    if doveconf is None:
        pytest.fail("doveconf is not installed: apt-get install -y dovecot-imapd")
    result = subprocess.run(
        [doveconf, "-n", "-c", str(DOVECOT / "dovecot.conf")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "disable_plaintext_auth = no" in result.stdout


def _start_dovecot(tmp_path: Path, password: str) -> tuple[subprocess.CompletedProcess[str], int]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "dovecot"
    stub.write_text(STUB, encoding="utf-8")
    stub.chmod(0o755)
    (tmp_path / "password").write_text(password, encoding="utf-8")
    owner = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True, check=True).stdout
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "IMAP_USER": "sample",
        "IMAP_PASSWORD_FILE": str(tmp_path / "password"),
        "SEED_DIR": str(SEED_MAILBOX),
        "MAIL_ROOT": str(tmp_path / "mail"),
        "PASSWD_FILE": str(tmp_path / "users"),
        "MAIL_OWNER": f"{owner.strip()}:{group.strip()}",
        "PASSWD_GROUP": group.strip(),
    }
    process = subprocess.Popen(
        ["sh", str(DOVECOT / "start.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=30)
    return subprocess.CompletedProcess([], process.returncode, stdout, stderr), process.pid


def test_dovecot_start_seeds_once_and_execs_dovecot(tmp_path: Path) -> None:
    result, pid = _start_dovecot(tmp_path, "s3cret\n")
    assert result.returncode == 0, result.stderr
    assert f"pid={pid}" in result.stdout.splitlines()
    assert _stub_args(result.stdout) == ["-F"]
    users = tmp_path / "users"
    assert users.read_text(encoding="utf-8") == "sample:{PLAIN}s3cret::::::\n"
    assert stat.S_IMODE(users.stat().st_mode) == 0o640

    maildir = tmp_path / "mail" / "sample" / "Maildir"
    seeded = sorted(p.name for p in (maildir / "cur").iterdir())
    expected = sorted(p.name for p in (SEED_MAILBOX / "cur").iterdir() if p.name[0] != ".")
    assert seeded == expected and seeded
    assert (maildir / "new").is_dir() and (maildir / "tmp").is_dir()

    (maildir / "cur" / seeded[0]).unlink()  # a later start keeps the mailbox as it is
    result, _ = _start_dovecot(tmp_path, "s3cret\n")
    assert result.returncode == 0, result.stderr
    assert len(list((maildir / "cur").iterdir())) == len(expected) - 1


@pytest.mark.parametrize("password", ["", "with:colon", "two\nlines"])
def test_dovecot_start_refuses_an_unusable_password(tmp_path: Path, password: str) -> None:
    result, _ = _start_dovecot(tmp_path, password)
    assert result.returncode == 2
    assert "pid=" not in result.stdout


# ------------------------------------------------------------------------------ Kubernetes


def test_cronjob_schedule_and_policies() -> None:
    spec = _cronjob()["spec"]
    assert spec["schedule"] == "*/30 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] < _minutes_between_runs(spec["schedule"]) * 60
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 2
    pod = _pod(_cronjob())
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["args"] == ["run"]
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"]["containerName"] == container["name"]
    assert sorted(rule["onExitCodes"]["values"]) == [2, 3]  # config, fatal: retrying can't help


@CRONJOBS
def test_cronjob_deadline_is_above_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cronjob_file: str
) -> None:
    spec = _cronjob(cronjob_file)["spec"]
    deadline = spec["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    defaults = Settings.model_construct().timeouts
    configured = _validate(_configmap_toml(), tmp_path, _secret_items(), monkeypatch).timeouts
    for timeouts in (defaults, configured):
        assert deadline > timeouts.run + timeouts.grace
    assert deadline < _minutes_between_runs(spec["schedule"]) * 60


@CRONJOBS
def test_cronjob_container_is_locked_down(cronjob_file: str) -> None:
    pod = _pod(_cronjob(cronjob_file))
    (container,) = pod["containers"]
    context = {**pod.get("securityContext", {}), **container["securityContext"]}
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == IMAGE_UID
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["fsGroup"] == IMAGE_UID, "the PVC must be writable by 10001"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys(), kind


@CRONJOBS
def test_cronjob_volumes_and_mounts(cronjob_file: str) -> None:
    pod = _pod(_cronjob(cronjob_file))
    (container,) = pod["containers"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes, f"volumeMount {mount['name']} has no volume"

    config = volumes[mounts[str(_image_config_path().parent)]["name"]]["configMap"]
    assert config["name"] == _yaml(K8S / "configmap.yaml")["metadata"]["name"]
    assert _configmap_item()["path"] == _image_config_path().name
    assert _configmap_item()["key"] in _yaml(K8S / "configmap.yaml")["data"]

    secrets = volumes[mounts["/run/secrets"]["name"]]["secret"]
    example = _yaml(K8S / "secret.example.yaml")
    assert secrets["secretName"] == example["metadata"]["name"]
    items = {item["key"] for item in secrets["items"]}
    assert items == {"imap_password", "openai_api_key"}
    assert items <= example["stringData"].keys()
    for variable in container.get("env", []):
        reference = variable["valueFrom"]["secretKeyRef"]
        assert reference["name"] == example["metadata"]["name"]
        assert reference["key"] in example["stringData"]

    data = volumes[mounts[str(DATA_DIR)]["name"]]
    assert data["persistentVolumeClaim"]["claimName"] == _yaml(K8S / "pvc.yaml")["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "/tmp must be writable"
    assert all(mounts[path].get("readOnly") for path in ("/etc/invoicesync", "/run/secrets"))


def test_workers_job_is_a_work_queue_of_workers() -> None:
    """N pods of `run --worker`, no fixed completions: the Job ends when the work does."""
    spec = _cronjob("workers.yaml")["spec"]
    job = spec["jobTemplate"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert job["parallelism"] >= 2 and "completions" not in job
    (container,) = _pod(_cronjob("workers.yaml"))["containers"]
    assert container["args"] == ["run", "--worker"]
    single = _pod(_cronjob())
    assert _pod(_cronjob("workers.yaml"))["volumes"] == single["volumes"]
    assert container["image"] == single["containers"][0]["image"]


def test_secret_example_is_marked_as_example() -> None:
    text = (K8S / "secret.example.yaml").read_text(encoding="utf-8")
    assert text.startswith("# EXAMPLE")
    assert all(
        "EXAMPLE" in value for value in _yaml(K8S / "secret.example.yaml")["stringData"].values()
    )


def test_configmap_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's TOML loads, every *_file secret found among the Secret's items."""
    settings = _validate(_configmap_toml(), tmp_path, _secret_items(), monkeypatch)
    pod = _pod(_cronjob())
    (container,) = pod["containers"]
    secrets_mount = next(
        m["mountPath"] for m in container["volumeMounts"] if m["name"] == "secrets"
    )
    assert tomllib.loads(_configmap_toml())["secrets_dir"] == secrets_mount
    assert settings.database.url.startswith("postgresql+psycopg://")
    for path in (settings.storage.dir, settings.storage.tokens_dir):
        assert DATA_DIR in PurePosixPath(path).parents, f"{path} is not on the PVC"
    assert all(account.password is not None for account in settings.accounts)
    assert settings.openai.api_key is not None


# What the run's own process may take (bench/run checks it), beside its workers.
PARENT_MIB = 250


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "k": 1 / 1024, "m": 1, "g": 1024}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity) / (1024 * 1024)


@CRONJOBS
def test_cronjob_memory_limit_holds_the_run_and_its_workers(
    cronjob_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker per CPU of the limit (the default), each at its memory cap, fits."""
    (container,) = _pod(_cronjob(cronjob_file))["containers"]
    limits = container["resources"]["limits"]
    extract = _validate(_configmap_toml(), tmp_path, _secret_items(), monkeypatch).extract
    workers = extract.processes or math.ceil(float(limits["cpu"]))
    assert extract.memory_mb > 0, "workers without a memory cap can take the pod down"
    assert PARENT_MIB + workers * extract.memory_mb <= _mebibytes(limits["memory"])


def test_compose_memory_limit_holds_the_run_and_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _compose()["services"]["invoicesync"]
    text = COMPOSE_CONFIG.read_text(encoding="utf-8")
    secrets = {name: "x" for name in _compose_secrets(service)}
    extract = _validate(text, tmp_path, secrets, monkeypatch).extract
    workers = extract.processes or math.ceil(float(service["cpus"]))
    assert extract.memory_mb > 0
    assert PARENT_MIB + workers * extract.memory_mb <= _mebibytes(service["mem_limit"])
