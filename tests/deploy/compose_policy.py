"""Readers and policy checkers for ``docker-compose.yaml`` and ``.env.example``.

Compose cannot run here (no Docker engine), so the deployment file is checked statically: this module
interpolates variables the way Compose does, and each ``*_problems`` function states one policy of the
production deployment and returns what breaks it (an empty list when the file complies). The tests in
test_compose_policy.py apply them to the real file and to small bad documents, so every checker is
shown to catch what it is meant to catch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
MONITORING = REPO / "monitoring"

# Services that may publish ports, always on the bind address (default 127.0.0.1).
PUBLISHING_SERVICES = frozenset({"airflow-apiserver", "grafana"})
BIND_HOSTS = ("${LAKEHOUSE_BIND_ADDRESS:-127.0.0.1}", "127.0.0.1")
# The secrets the deployment needs; each must be required (${VAR:?message}) wherever it is used.
REQUIRED_SECRETS = frozenset({
    "POSTGRES_PASSWORD", "LAKEHOUSE_CATALOG_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
    "LAKEHOUSE_S3_ACCESS_KEY", "LAKEHOUSE_S3_SECRET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY",
    "AIRFLOW_ADMIN_PASSWORD", "GRAFANA_ADMIN_PASSWORD",
})
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")
# volume-init is the one container that starts as root: it hands the MinIO volume to MinIO's uid.
ROOT_ALLOWED = frozenset({"volume-init"})
# Capabilities a service adds back after cap_drop ALL (each commented in the compose file).
CAP_ADD_ALLOWED: Mapping[str, frozenset[str]] = {"volume-init": frozenset({"CHOWN"})}
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"

_DOLLAR = "\x00"  # stands for an escaped "$$" while references are read
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
_BARE_REFERENCE = re.compile(r"\$[A-Za-z_]")


class InterpolationError(ValueError):
    """A required variable (``${VAR:?message}``) is unset or empty, or a reference is malformed."""


@dataclass(frozen=True)
class Reference:
    name: str
    operator: str | None  # None, ":-", "-", ":?", "?", ":+", "+"
    argument: str


# --- Variables and interpolation ---------------------------------------------------------------------
def references(text: str) -> list[Reference]:
    """Every ``${...}`` variable reference of ``text`` (escaped ``$$`` excluded)."""
    unescaped = text.replace("$$", _DOLLAR)
    return [Reference(m[1], m[2], m[3] or "") for m in _REFERENCE.finditer(unescaped)]


def bare_references(text: str) -> list[str]:
    """``$VAR`` references without braces (not allowed: the policy checks read ``${...}`` only)."""
    unescaped = _REFERENCE.sub("", text.replace("$$", _DOLLAR))
    return [m.group(0) for m in _BARE_REFERENCE.finditer(unescaped)]


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """``value`` with its variables substituted as Compose does (``$$`` becomes ``$``)."""

    def substitute(m: re.Match[str]) -> str:
        name, op, arg = m[1], m[2], m[3] or ""
        current = env.get(name)
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return current
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op == ":+":
            return arg if current else ""
        if op == "+":
            return arg if current is not None else ""
        return current or ""

    unescaped = value.replace("$$", _DOLLAR)
    substituted = _REFERENCE.sub(substitute, unescaped)
    if "${" in substituted:
        raise InterpolationError(f"malformed variable reference in {value!r}")
    return substituted.replace(_DOLLAR, "$")


def value_text(node: Any) -> str:
    """Every string of the loaded document (keys and values, not comments), one per line: what Compose
    interpolates."""
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "\n".join(value_text(item) for item in node)
    if isinstance(node, dict):
        return "\n".join(f"{value_text(key)}\n{value_text(value)}" for key, value in node.items())
    return ""


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def env_file_values(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """The ``KEY=value`` assignments of an env file (commented-out ones excluded)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line.strip())
        if m:
            values[m[1]] = m[2]
    return values


def env_file_documented(path: Path = ENV_EXAMPLE) -> set[str]:
    """Variables an env file documents: its assignments and its commented-out ``# KEY=`` examples."""
    text = path.read_text(encoding="utf-8")
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def sample_environment(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """``.env.example`` with every empty value filled in with a placeholder, as an operator would."""
    return {k: v or f"test-{k.lower().replace('_', '-')}" for k, v in env_file_values(path).items()}


# --- Reading the compose document ---------------------------------------------------------------------
def load(text: str) -> dict[str, Any]:
    """The compose document with YAML anchors and merge keys resolved (not interpolated)."""
    return yaml.safe_load(text)


def services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose.get("services") or {})


def environment_of(service: Mapping[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict((item.split("=", 1) + [None])[:2] for item in env)
    return dict(env)


def pass_through_variables(compose: Mapping[str, Any]) -> set[str]:
    """Environment entries without a value: Compose fills them from .env or the shell when set there."""
    return {key for svc in services(compose).values() for key, value in environment_of(svc).items()
            if value is None}


def one_shot_services(compose: Mapping[str, Any]) -> set[str]:
    """Services others wait for to complete (``condition: service_completed_successfully``)."""
    out = set()
    for svc in services(compose).values():
        depends = svc.get("depends_on") or {}
        if isinstance(depends, dict):
            out |= {name for name, cond in depends.items()
                    if (cond or {}).get("condition") == "service_completed_successfully"}
    return out


def dockerfiles(compose: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(service, inline Dockerfile) for every service built from ``dockerfile_inline``."""
    for name, svc in services(compose).items():
        build = svc.get("build")
        if isinstance(build, dict) and build.get("dockerfile_inline"):
            yield name, build["dockerfile_inline"]


# --- Policies -----------------------------------------------------------------------------------------
def secret_default_problems(compose: Mapping[str, Any]) -> list[str]:
    """Every variable named like a secret (and every secret the stack needs) is required: ``:?`` with a
    message, never a default; and references are braced, so this check sees them all."""
    text = value_text(compose)
    problems = [f"unbraced variable reference {ref}" for ref in bare_references(text)]
    for ref in references(text):
        if SECRET_NAME.search(ref.name) or ref.name in REQUIRED_SECRETS:
            if ref.operator != ":?" or not ref.argument.strip():
                shown = f"${{{ref.name}{ref.operator or ''}{ref.argument}}}"
                problems.append(f"{ref.name} must be required as ${{{ref.name}:?message}}, found {shown}")
    return problems


def required_secret_problems(compose: Mapping[str, Any]) -> list[str]:
    """Every secret of the deployment is actually read from a required variable."""
    text = value_text(compose)
    used = {ref.name for ref in references(text) if ref.operator == ":?"}
    return [f"secret {name} is not read from a required variable" for name in sorted(REQUIRED_SECRETS - used)]


def literal_secret_problems(compose: Mapping[str, Any]) -> list[str]:
    """No environment entry named like a secret carries a literal value (only required references)."""
    problems = []
    for name, svc in services(compose).items():
        for key, value in environment_of(svc).items():
            if value is None or not SECRET_NAME.search(key):
                continue
            literal = _REFERENCE.sub("", str(value).replace("$$", _DOLLAR))
            if literal.strip() or not all(ref.operator == ":?" for ref in references(str(value))):
                problems.append(f"{name}: {key} carries a literal or defaulted value")
    return problems


def env_example_problems(compose: Mapping[str, Any], env_example: Path = ENV_EXAMPLE) -> list[str]:
    """``.env.example`` documents every variable the compose file reads, leaves every required value
    empty (so a plain copy does not start), and says how to generate each required secret."""
    text = value_text(compose)
    documented = env_file_documented(env_example)
    values = env_file_values(env_example)
    wanted = {ref.name for ref in references(text)} | pass_through_variables(compose)
    problems = [f"{name} is not documented in {env_example.name}" for name in sorted(wanted - documented)]
    lines = env_example.read_text(encoding="utf-8").splitlines()
    for ref in references(text):
        if ref.operator != ":?" or ref.name not in values:
            continue
        if values[ref.name]:
            problems.append(f"{env_example.name} gives required {ref.name} a value: leave it empty")
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{ref.name}="))
        comments = []
        for line in reversed(lines[:index]):
            if not line.startswith("#"):
                break
            comments.append(line)
        if (SECRET_NAME.search(ref.name) or ref.name in REQUIRED_SECRETS) and not any(
                re.search(r"openssl |python -c|\becho ", c) for c in comments):
            problems.append(f"{env_example.name} does not say how to generate {ref.name}")
    return sorted(set(problems))


def _published_host_ip(port: Any) -> tuple[str | None, str]:
    """(host ip or None, shown form) of one ``ports:`` entry, short or long syntax."""
    if isinstance(port, dict):
        return port.get("host_ip"), str(port)
    text = str(port)
    for host in BIND_HOSTS:
        if text.startswith(host + ":"):
            return host, text
    parts = text.split(":")
    return (parts[0] if len(parts) == 3 else None), text


def port_problems(compose: Mapping[str, Any]) -> list[str]:
    """Only the Airflow UI and Grafana publish ports, and only on the bind address (127.0.0.1 unless
    the operator sets LAKEHOUSE_BIND_ADDRESS). Read from the uninterpolated document."""
    problems = []
    for name, svc in services(compose).items():
        ports = svc.get("ports") or []
        if ports and name not in PUBLISHING_SERVICES:
            problems.append(f"{name} publishes {ports}: only {sorted(PUBLISHING_SERVICES)} may")
        for port in ports:
            host, shown = _published_host_ip(port)
            if host not in BIND_HOSTS:
                problems.append(f"{name} publishes {shown} without the bind address {BIND_HOSTS[0]}")
        if svc.get("network_mode") == "host":
            problems.append(f"{name} uses the host network")
    return problems


_IMAGE = re.compile(r"^(?P<repo>[a-z0-9][a-z0-9._/-]*(?::\d+/[a-z0-9._/-]+)?)"  # registry[:port]/path
                    r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})"
                    r"(?:@sha256:(?P<digest>[0-9a-f]{64}))?$")
_RELEASE_TAG = re.compile(r"^v?\d+\.\d+\.\d+"  # major.minor.patch (v0.28.0, 3.3.2-python3.11)
                          r"|^RELEASE\.\d{4}-\d{2}-\d{2}T"  # dated releases (MinIO)
                          r"|^\d{4}-?\d{2}-?\d{2}")
# PostgreSQL numbers releases major.minor since version 10: the minor number is the patch release.
_TWO_PART_VERSIONED = {"postgres": re.compile(r"^\d{2,}\.\d+(-[a-z0-9]+)?$")}


def image_problem(image: str) -> str | None:
    """Why ``image`` is not an exact release (None when it is)."""
    m = _IMAGE.match(image)
    if not m:
        return f"{image}: no tag (or not image:tag[@sha256:digest])"
    repo, tag = m["repo"], m["tag"]
    if tag == "latest" or "latest" in tag.split("-"):
        return f"{image}: 'latest' is not a version"
    two_part = _TWO_PART_VERSIONED.get(repo.rsplit("/", 1)[-1] if repo.startswith("library/") else repo)
    if _RELEASE_TAG.match(tag) or (two_part and two_part.match(tag)):
        return None
    return f"{image}: tag {tag!r} is not an exact release (major.minor.patch or a dated release)"


def image_problems(interpolated: Mapping[str, Any]) -> list[str]:
    """Every service's image, and every FROM of an inline Dockerfile, is an exact release tag (a
    digest may follow). Read from the interpolated document (the image tag may be a variable)."""
    problems = []
    for name, svc in services(interpolated).items():
        image = svc.get("image")
        if not image:
            problems.append(f"{name} has no image")
        elif problem := image_problem(image):
            problems.append(f"{name}: {problem}")
    for name, dockerfile in dockerfiles(interpolated):
        for base in re.findall(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", dockerfile, flags=re.MULTILINE | re.I):
            if problem := image_problem(base):
                problems.append(f"{name} Dockerfile: {problem}")
    return problems


def lifecycle_problems(compose: Mapping[str, Any]) -> list[str]:
    """Long-running services have a healthcheck and ``restart: unless-stopped``; one-shot jobs (those
    others wait to complete) do not restart forever."""
    problems = []
    one_shot = one_shot_services(compose)
    for name, svc in services(compose).items():
        if name in one_shot:
            if svc.get("restart") in ("always", "unless-stopped"):
                problems.append(f"one-shot {name} would restart forever (restart: {svc['restart']})")
            continue
        check = svc.get("healthcheck") or {}
        if not check.get("test") or check.get("disable") or check.get("test") in (["NONE"], "NONE"):
            problems.append(f"{name} has no healthcheck")
        if svc.get("restart") != "unless-stopped":
            problems.append(f"{name} has restart {svc.get('restart')!r}, not 'unless-stopped'")
    return problems


def hardening_problems(compose: Mapping[str, Any]) -> list[str]:
    """Every service: no-new-privileges, cap_drop ALL (cap_add only as allowed), not privileged, and
    read_only declared either way (false only with a reason, commented in the file)."""
    problems = []
    for name, svc in services(compose).items():
        if not any(opt.replace("=", ":") in ("no-new-privileges:true", "no-new-privileges")
                   for opt in svc.get("security_opt") or []):
            problems.append(f"{name} lacks security_opt no-new-privileges:true")
        if "ALL" not in [str(cap).upper() for cap in svc.get("cap_drop") or []]:
            problems.append(f"{name} does not cap_drop ALL")
        added = {str(cap).upper().removeprefix("CAP_") for cap in svc.get("cap_add") or []}
        if extra := added - CAP_ADD_ALLOWED.get(name, frozenset()):
            problems.append(f"{name} adds capabilities {sorted(extra)}")
        if svc.get("privileged"):
            problems.append(f"{name} is privileged")
        if "read_only" not in svc:
            problems.append(f"{name} does not declare read_only")
    return problems


def read_only_reason_problems(text: str) -> list[str]:
    """Each ``read_only: false`` follows a comment saying why the root filesystem stays writable."""
    lines = text.splitlines()
    return [f"line {i + 1}: read_only: false without a comment above it"
            for i, line in enumerate(lines)
            if re.fullmatch(r"\s*read_only:\s*false\s*(#.*)?", line) and not lines[i - 1].strip().startswith("#")]


def user_problems(compose: Mapping[str, Any]) -> list[str]:
    """Every service declares a non-root user (root only where ROOT_ALLOWED says why)."""
    problems = []
    for name, svc in services(compose).items():
        user = svc.get("user")
        if user is None:
            problems.append(f"{name} declares no user")
            continue
        uid = str(user).split(":", 1)[0]
        if uid in ("0", "root") and name not in ROOT_ALLOWED:
            problems.append(f"{name} runs as root (user: {user})")
    return problems


_DOWNLOAD = re.compile(r"(?:curl|wget)\b[^&|;]*?\s(?:-o|-O|--output(?:-document)?)[ =](?P<path>\S+)")
_ADD_URL = re.compile(r"^\s*ADD\s+(?:--\S+\s+)*https?://", re.MULTILINE | re.I)


def download_checksum_problems(compose: Mapping[str, Any]) -> list[str]:
    """Every file an inline Dockerfile downloads is verified (``echo "<sha256>  <file>" | sha256sum
    -c -``, or sha512sum) before use; ``ADD <url>`` (unverified) is not used."""
    problems = []
    for name, dockerfile in dockerfiles(compose):
        joined = re.sub(r"\\\n\s*", " ", dockerfile)
        if _ADD_URL.search(joined):
            problems.append(f"{name}: ADD <url> downloads without a checksum")
        for m in _DOWNLOAD.finditer(joined):
            path = re.escape(m["path"].strip("'\""))
            verified = re.compile(
                rf'echo\s+["\']?(?:[0-9a-f]{{64}}\s\s{path}["\']?\s*\|\s*sha256sum|'
                rf'[0-9a-f]{{128}}\s\s{path}["\']?\s*\|\s*sha512sum)\s+(?:-c|--check)(?:\s+-|\s*$|\s*&&)')
            if not verified.search(joined):
                problems.append(f"{name}: {m['path']} is downloaded without a sha256sum/sha512sum check")
    return problems


def runtime_install_problems(compose: Mapping[str, Any]) -> list[str]:
    """Inline Dockerfiles install the runtime requirements only, pinned by constraints.txt."""
    problems = []
    for name, dockerfile in dockerfiles(compose):
        installs = [line for line in re.sub(r"\\\n\s*", " ", dockerfile).splitlines() if "pip install" in line]
        if any("requirements-dev" in line for line in installs):
            problems.append(f"{name}: installs requirements-dev.txt (test tools) into the image")
        if not any(re.search(r"-r\s+\S*requirements\.txt\s.*-c\s+\S*constraints\.txt", line) for line in installs):
            problems.append(f"{name}: does not install requirements.txt with -c constraints.txt")
    return problems
