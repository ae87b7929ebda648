#!/usr/bin/env python3
"""Checks deploy/, the Dockerfile and .env.example against the Rust sources. Run by check.sh.

The source is the reference: environment variables are the `env = "..."` attributes of the
clap arguments, metric names and labels come from the two metrics.rs files, the toolchain
from rust-toolchain.toml. Anything in the deployment files that names something the source
does not have (or misses something it has, for .env.example) is an error, and every error
is reported before the script exits 1.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

problems: list[str] = []
passed: list[str] = []


def problem(where: object, message: str) -> None:
    problems.append(f"{where}: {message}")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---- facts from the source ----------------------------------------------------------------

ENV_ATTR = re.compile(r'\benv\s*=\s*"([A-Za-z_][A-Za-z0-9_]*)"')

# Read by a library from the environment rather than through a clap attribute: the variable,
# the file that makes the call, and the call. If the call goes, so must the variable.
IMPLICIT_ENV = {"RUST_LOG": ("bosonserver/src/main.rs", "EnvFilter::try_from_default_env")}


def source_env_vars() -> dict[str, str]:
    """Every environment variable the binary reads, with where it is declared."""
    found: dict[str, str] = {}
    for path in sorted(ROOT.glob("**/*.rs")):
        parts = path.relative_to(ROOT).parts
        # node/ is the boson-node agent: another binary, whose BOSON_NODE_* variables the
        # README documents; they are not bosonserver's.
        if "target" in parts or parts[0] in ("fuzz", "node"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name in ENV_ATTR.findall(line):
                found.setdefault(name, f"{rel(path)}:{number}")
    for name, (file, call) in IMPLICIT_ENV.items():
        if call in (ROOT / file).read_text(encoding="utf-8"):
            found.setdefault(name, f"{file} ({call})")
    if len(found) < 10:
        problem("source", f"found only {len(found)} env attributes; has the pattern changed?")
    return found


def source_metrics() -> tuple[set[str], set[str]]:
    """Every metric name the server exports (histogram series included) and every label."""
    names: set[str] = set()
    labels = {"instance", "job"}  # added by Prometheus to every scraped series

    control = (ROOT / "control/src/metrics.rs").read_text(encoding="utf-8")
    control_names = set(re.findall(r'"(bosonserver_[a-z0-9_]+)"', control))
    histograms = set(re.findall(r'HistogramOpts::new\(\s*"(bosonserver_[a-z0-9_]+)"', control))
    names |= control_names
    for histogram in histograms:
        names |= {histogram + suffix for suffix in ("_bucket", "_sum", "_count")}
        labels.add("le")
    for label_list in re.findall(r"&\[((?:\s*\"[a-z_]+\"\s*,?)+)\]", control):
        labels |= set(re.findall(r'"([a-z_]+)"', label_list))

    dataplane = (ROOT / "dataplane/server/src/metrics.rs").read_text(encoding="utf-8")
    prefix = re.search(r'pub const PREFIX: &str = "([a-z_]+)";', dataplane)
    if not prefix:
        problem("dataplane/server/src/metrics.rs", "no `pub const PREFIX`")
        return names, labels
    short = set(re.findall(r'\bname: "([a-z0-9_]+)"', dataplane))
    short |= set(re.findall(r'\bconst [A-Z_]+: &str = "([a-z0-9_]+)";', dataplane))
    names |= {prefix[1] + name for name in short if prefix[1] + name != prefix[1]}
    labels |= set(re.findall(r'Some\(\("([a-z_]+)",', dataplane))
    labels |= set(re.findall(r'([a-z_]+)=\\"', dataplane))

    if len(control_names) < 3 or len(short) < 10:
        problem("source", f"found only {len(control_names)} control and {len(short)} dataplane "
                          "metric names; has metrics.rs changed shape?")
    return names, labels


def default_of(env_var: str) -> str | None:
    """The clap default_value of the argument reading `env_var`, if it is a literal."""
    for path in (ROOT / "bosonserver/src/dataplane.rs", ROOT / "control/src/config.rs"):
        text = path.read_text(encoding="utf-8")
        match = re.search(rf'env = "{env_var}"[^\]]*?default_value = "([^"]+)"', text)
        if match:
            return match[1]
    return None


ENV_VARS = source_env_vars()
METRICS, LABELS = source_metrics()


def check_env_names(where: object, names: object, what: str) -> None:
    for name in names:
        if name not in ENV_VARS:
            problem(where, f"{what} {name} is not read by bosonserver (no env attribute names it)")


# ---- every YAML and JSON file parses -------------------------------------------------------

def load_all() -> dict[Path, list]:
    documents: dict[Path, list] = {}
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml", ".json"))
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".json":
                documents[path] = [json.loads(text)]
            else:
                documents[path] = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as error:
            problem(rel(path), f"does not parse: {error}")
    passed.append(f"{len(files)} YAML/JSON files parse")
    return documents


# ---- .env.example ---------------------------------------------------------------------------

def check_env_example() -> None:
    path = ROOT / ".env.example"
    listed: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = re.match(r"#?([A-Z][A-Z0-9_]*)=", line)
        if not match:
            continue
        if match[1] in listed:
            problem(f".env.example:{number}", f"{match[1]} listed twice (also line {listed[match[1]]})")
        listed[match[1]] = number
    for name, origin in sorted(ENV_VARS.items()):
        if name not in listed:
            problem(".env.example", f"missing {name} (read at {origin})")
    for name, number in sorted(listed.items()):
        if name not in ENV_VARS:
            problem(f".env.example:{number}", f"lists {name}, which bosonserver does not read")
    passed.append(f".env.example lists exactly the {len(ENV_VARS)} variables the binary reads")


# ---- Dockerfile -----------------------------------------------------------------------------

class DockerIgnore:
    """.dockerignore as Docker 20.10's context walker applies it: Go-style globs where `**`
    spans directories, the last matching line winning, `!` re-including; a pattern also
    matches every path under a directory it matches, and an excluded directory is not even
    entered unless a `!` pattern names a path inside it literally (moby's fileutils and
    fsutil), which is why `!**/Cargo.toml` cannot re-include `shared/Cargo.toml` under `*`."""

    def __init__(self, path: Path) -> None:
        self.patterns: list[tuple[bool, str, int, re.Pattern[str]]] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            pattern = (line[1:].strip() if exclusion else line).strip("/")
            if pattern:
                self.patterns.append((exclusion, pattern, pattern.count("/") + 1,
                                      self._compile(pattern)))

    @staticmethod
    def _compile(pattern: str) -> re.Pattern[str]:
        regex, i = "", 0
        while i < len(pattern):
            char = pattern[i]
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    i += 1
                regex += ".*" if i == len(pattern) else "(.*/)?"
                continue
            regex += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            i += 1
        return re.compile(f"^{regex}$")

    def _matches(self, path: str) -> bool:
        parts = path.split("/")
        excluded = False
        for exclusion, _, depth, regex in self.patterns:
            matched = bool(regex.match(path))
            if not matched and len(parts) > 1 and depth <= len(parts) - 1:
                matched = bool(regex.match("/".join(parts[:depth])))
            if matched:
                excluded = not exclusion
        return excluded

    def excludes(self, path: str) -> bool:
        parts = path.split("/")
        for end in range(1, len(parts)):
            directory = "/".join(parts[:end])
            if self._matches(directory) and not any(
                    exclusion and pattern.startswith(directory + "/")
                    for exclusion, pattern, _, _ in self.patterns):
                return True
        return self._matches(path)


def tracked_files(under: str) -> list[str]:
    """The files git tracks under a path (what a fresh checkout has), relative to the root."""
    result = subprocess.run(["git", "ls-files", "-z", "--", under], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return [f for f in result.stdout.split("\0") if f]


def workspace_members() -> list[str]:
    import tomllib

    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text(encoding="utf-8"))
    members: list[str] = []
    for entry in manifest.get("workspace", {}).get("members", []):
        found = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(entry) if (p / "Cargo.toml").exists())
        if not found:
            problem("Cargo.toml", f"workspace member {entry} has no Cargo.toml")
        members += found
    return members


def check_members_reach_image(ignore: DockerIgnore, copied: list[str]) -> None:
    """cargo reads every member's manifest and targets even to build one package, so each
    member's Cargo.toml, src/, build.rs and migrations/ must pass .dockerignore and be copied."""
    members = workspace_members()
    if len(members) < 5:
        problem("Cargo.toml", f"found only {len(members)} workspace members; has the file changed?")
    for member in members:
        needed = [f for f in tracked_files(member)
                  if f == f"{member}/Cargo.toml" or f == f"{member}/build.rs"
                  or f.startswith((f"{member}/src/", f"{member}/migrations/"))]
        if f"{member}/Cargo.toml" not in needed:
            problem(member, "its Cargo.toml is not tracked by git, so it reaches no checkout")
        excluded = [f for f in needed if ignore.excludes(f)]
        uncopied = [f for f in needed if f not in excluded and not any(
            c == "." or f == c or f.startswith(c + "/") for c in copied)]
        if excluded:
            problem(".dockerignore", f"excludes {len(excluded)} file(s) the workspace member "
                                     f"{member} needs, such as {excluded[0]}: the image would not build")
        if uncopied:
            problem("Dockerfile", f"no COPY brings {len(uncopied)} file(s) of the workspace member "
                                  f"{member}, such as {uncopied[0]}, into the build")
    for file in ("Cargo.toml", "Cargo.lock"):
        if ignore.excludes(file):
            problem(".dockerignore", f"excludes {file}")
    for secret in (".env", "deploy/.env", "data/bosonserver.db", "data/jwt-secret", ".git/config",
                   "target/release/bosonserver", "dataplane/server/target/a/src/b.rs",
                   "fuzz/Cargo.toml", "tls/relay.key", "relay-cert.pem", "bosonserver.db-wal"):
        if not ignore.excludes(secret):
            problem(".dockerignore", f"lets {secret} into the build context")
    passed.append(f"all {len(members)} workspace members reach the image's build context")


def check_dockerfile() -> int | None:
    path = ROOT / "Dockerfile"
    text = path.read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)

    toolchain = re.search(r'channel\s*=\s*"([^"]+)"', (ROOT / "rust-toolchain.toml").read_text())
    pinned = re.search(r"^ARG RUST_VERSION=(\S+)", text, re.M)
    if not (toolchain and pinned and toolchain[1] == pinned[1]):
        problem("Dockerfile", f"ARG RUST_VERSION={pinned and pinned[1]} but rust-toolchain.toml "
                              f"pins {toolchain and toolchain[1]}")
    if "cargo build --release --locked" not in joined:
        problem("Dockerfile", "the build must be `cargo build --release --locked`")

    stages = re.split(r"^FROM ", joined, flags=re.M)[1:]
    by_name = {}
    for stage in stages:
        header = stage.splitlines()[0]
        by_name[header.split(" AS ")[-1].strip() if " AS " in header else header] = stage
    if list(by_name)[-1] != "runtime":
        problem("Dockerfile", "the last stage (the default target) must be `runtime`")
    relay_ports = default_of("BOSON_RELAY_PORTS")
    for name in ("runtime", "allinone"):
        stage = by_name.get(name)
        if stage is None:
            problem("Dockerfile", f"no stage named {name}")
            continue
        healthcheck = re.search(r"^HEALTHCHECK .*CMD (.*)$", stage, re.M)
        if not healthcheck or "healthcheck" not in healthcheck[1]:
            problem("Dockerfile", f"stage {name}: HEALTHCHECK must run `bosonserver healthcheck`")
        exposed = set(" ".join(re.findall(r"^EXPOSE (.*)$", stage, re.M)).split())
        wanted = {"3478/udp", "3478/tcp", "5349/tcp", "8443/tcp", "8443/udp", f"{relay_ports}/udp"}
        if missing := wanted - exposed:
            problem("Dockerfile", f"stage {name}: EXPOSE lacks {sorted(missing)}")
        for env_line in re.findall(r"^ENV (.*)$", stage, re.M):
            check_env_names(f"Dockerfile stage {name}", re.findall(r"([A-Z][A-Z0-9_]*)=", env_line), "ENV")
    runtime = by_name.get("runtime", "")
    user = re.search(r"^USER (\d+)(?::(\d+))?$", runtime, re.M)
    if not user:
        problem("Dockerfile", "runtime must set a numeric USER (Kubernetes' runAsNonRoot needs it)")
    elif user[1] == "0":
        problem("Dockerfile", "runtime runs as root")

    # Everything copied from the context must get past the .dockerignore allowlist.
    ignore = DockerIgnore(ROOT / ".dockerignore")
    copied: list[str] = []
    for source in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", text, re.M):
        for item in source.split():
            item = item.rstrip("/") or "."
            copied.append(item)
            if not (ROOT / item).exists():
                problem("Dockerfile", f"COPY {item}: no such path")
            elif item != "." and not any(not ignore.excludes(f) for f in tracked_files(item)):
                problem("Dockerfile", f"COPY {item}: excluded by .dockerignore")
    check_members_reach_image(ignore, copied)
    passed.append("Dockerfile: toolchain pin, stages, HEALTHCHECK, EXPOSE, ENV, USER, COPY sources")
    return int(user[1]) if user else None


# ---- docker-compose.yml ---------------------------------------------------------------------

def compose_variables(text: str) -> set[str]:
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def check_compose(documents: dict[Path, list]) -> None:
    path = ROOT / "docker-compose.yml"
    where = rel(path)
    try:
        compose = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        problem(where, f"does not parse: {error}")
        return
    if not isinstance(compose, dict):
        problem(where, "missing or not a mapping")
        return
    services = compose.get("services", {})
    for name in ("bosonserver", "postgres", "redis", "prometheus", "grafana"):
        if name not in services:
            problem(where, f"no service {name}")
    for name, service in services.items():
        test = (service.get("healthcheck") or {}).get("test")
        if not test:
            problem(where, f"service {name} has no healthcheck")
        for key, value in (service.get("environment") or {}).items():
            if not isinstance(value, str):
                problem(where, f"service {name}: {key} is a YAML {type(value).__name__}, quote it")
            elif value == "":
                problem(where, f"service {name}: {key} is empty")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                if not (path.parent / source).exists():
                    problem(where, f"service {name} mounts {source}, which does not exist")
            elif source not in (compose.get("volumes") or {}):
                problem(where, f"service {name} uses volume {source}, not declared under volumes")

    def needs(service: str, dependency: str) -> None:
        condition = ((services.get(service, {}).get("depends_on") or {}).get(dependency) or {})
        if condition.get("condition") != "service_healthy":
            problem(where, f"{service} must depend on {dependency} being service_healthy")

    needs("bosonserver", "postgres")
    needs("bosonserver", "redis")
    needs("grafana", "prometheus")

    boson = services.get("bosonserver", {})
    check_env_names(f"{where} bosonserver", (boson.get("environment") or {}).keys(), "environment")
    test = " ".join((boson.get("healthcheck") or {}).get("test") or [])
    if "bosonserver healthcheck" not in test:
        problem(where, "bosonserver's healthcheck must run `bosonserver healthcheck`")
    ports = " ".join(boson.get("ports", []))
    if boson.get("network_mode") != "host" and "3478" not in ports:
        problem(where, "bosonserver needs network_mode: host or 3478/udp published")
    if "ALL" not in boson.get("cap_drop", []):
        problem(where, "bosonserver must drop all capabilities")
    # The quick start runs on Docker's default profile (a file must exist to be named); the
    # io_uring overlay adds the one make-io-uring-profile.sh writes.
    if any(opt.startswith("seccomp") for opt in boson.get("security_opt", [])):
        problem(where, "bosonserver names a seccomp profile: the quick start has none generated")
    if "no-new-privileges:true" not in boson.get("security_opt", []):
        problem(where, "bosonserver needs security_opt no-new-privileges:true")
    overlay_path = DEPLOY / "compose.io-uring.yml"
    overlay = (documents.get(overlay_path, [None])[0] or {}).get("services", {}).get("bosonserver", {})
    seccomp = [opt for opt in overlay.get("security_opt", []) if opt.startswith("seccomp")]
    generator = (DEPLOY / "seccomp/make-io-uring-profile.sh").read_text(encoding="utf-8")
    generated = re.search(r'out="\$here/([^"]+)"', generator)
    if len(seccomp) != 1 or not generated:
        problem(rel(overlay_path), "bosonserver needs exactly one seccomp security_opt")
    elif seccomp[0].split("=", 1)[-1] != f"./deploy/seccomp/{generated[1]}":
        problem(rel(overlay_path), f"{seccomp[0]} is not the file make-io-uring-profile.sh "
                                   f"writes (deploy/seccomp/{generated[1]})")
    if "no-new-privileges:true" not in overlay.get("security_opt", []):
        problem(rel(overlay_path), "its security_opt replaces the base file's: keep no-new-privileges:true")
    env_file = boson.get("env_file")
    if env_file not in (".env", [".env"]):
        problem(where, "bosonserver must read .env (env_file), the configuration .env.example documents")

    # Every variable compose interpolates is one bosonserver reads (so .env.example explains
    # it) or a compose-only setting deploy/README.md explains.
    used = compose_variables(path.read_text(encoding="utf-8"))
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for name in sorted(used):
        if name not in ENV_VARS and f"`{name}`" not in readme:
            problem(where, f"uses {name}, which neither bosonserver reads nor deploy/README.md explains")

    compose_cli = None
    if shutil.which("docker-compose"):
        compose_cli = ["docker-compose"]
    elif shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        compose_cli = ["docker", "compose"]
    if compose_cli:
        # Compose reads the overlay's profile, which exists only once it has been generated.
        overlay = ["-f", str(overlay_path)] if (DEPLOY / "seccomp/io-uring.json").exists() else []
        with tempfile.TemporaryDirectory() as scratch:
            env = Path(scratch) / ".env"
            numeric = ("_PORT", "_LIMIT")
            env.write_text("".join(f"{name}={'5432' if name.endswith(numeric) else 'check'}\n"
                                   for name in sorted(used)), encoding="utf-8")
            result = subprocess.run(
                [*compose_cli, "--project-directory", scratch, "--env-file", str(env),
                 "-f", str(path), *overlay, "config", "-q"],
                capture_output=True, text=True, cwd=ROOT)
        if result.returncode != 0:
            problem(where, f"{' '.join(compose_cli)} config: {result.stderr.strip()}")
        else:
            passed.append(f"{' '.join(compose_cli)} config -q")
    else:
        passed.append("(docker compose not available: compose checked structurally only)")
    passed.append("docker-compose.yml: services, health checks, depends_on, env names, mounts, seccomp")


def check_prometheus_and_grafana(documents: dict[Path, list]) -> None:
    prometheus = documents.get(DEPLOY / "prometheus/prometheus.yml", [{}])[0] or {}
    jobs = {job.get("job_name"): job for job in prometheus.get("scrape_configs", [])}
    job = jobs.get("bosonserver")
    http_port = (default_of("BOSON_HTTP_LISTEN") or ":").rsplit(":", 1)[1]
    if not job or job.get("metrics_path", "/metrics") != "/metrics":
        problem("deploy/prometheus/prometheus.yml", "no bosonserver job scraping /metrics")
    else:
        targets = [t for c in job.get("static_configs", []) for t in c.get("targets", [])]
        if not any(t.endswith(f":{http_port}") for t in targets):
            problem("deploy/prometheus/prometheus.yml", f"no target on the API port {http_port}")

    datasources = documents.get(DEPLOY / "grafana/provisioning/datasources/prometheus.yml", [{}])[0]
    uids = {d.get("uid") for d in (datasources or {}).get("datasources", [])}

    for path in sorted((DEPLOY / "grafana/dashboards").glob("*.json")):
        where = rel(path)
        dashboard = documents.get(path, [None])[0]
        if not isinstance(dashboard, dict):
            continue
        strings: list[str] = []
        datasource_uids: set[str] = set()

        def walk(node: object, key: str = "") -> None:
            if isinstance(node, dict):
                if key == "datasource" and "uid" in node:
                    datasource_uids.add(node["uid"])
                for k, v in node.items():
                    walk(v, k)
            elif isinstance(node, list):
                for v in node:
                    walk(v, key)
            elif isinstance(node, str):
                strings.append(node)

        walk(dashboard)
        referenced = set()
        for text in strings:
            referenced |= set(re.findall(r"\bbosonserver_[a-z0-9_]+", text))
        if not referenced:
            problem(where, "references no bosonserver metric at all")
        for name in sorted(referenced - METRICS):
            problem(where, f"metric {name} does not exist in the source")
        for uid in sorted(datasource_uids - uids - {"${datasource}"}):
            problem(where, f"data source uid {uid} is neither provisioned nor $datasource")

        # Labels in grouping clauses, matchers and legends must exist too.
        used_labels: set[str] = set()
        for text in strings:
            for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text):
                used_labels |= {label.strip() for label in group.split(",") if label.strip()}
            for matcher in re.findall(r"\{([^{}]*)\}", text):
                used_labels |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matcher))
            used_labels |= set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", text))
        for label in sorted(used_labels - LABELS):
            problem(where, f"label {label} is not exported by the source")
        passed.append(f"{where}: {len(referenced)} metric names and {len(used_labels)} labels exist")


# ---- Kubernetes -----------------------------------------------------------------------------

def check_k8s(documents: dict[Path, list], runtime_uid: int | None) -> None:
    directory = DEPLOY / "k8s"
    kustomization = documents.get(directory / "kustomization.yaml", [{}])[0] or {}
    namespace = kustomization.get("namespace")
    resources = kustomization.get("resources", [])
    objects: dict[str, list[tuple[Path, dict]]] = {}
    for path, docs in documents.items():
        if path.parent != directory or path.name == "kustomization.yaml":
            continue
        for doc in docs:
            objects.setdefault(doc.get("kind"), []).append((path, doc))
            if doc.get("kind") != "Namespace" and doc.get("metadata", {}).get("namespace") != namespace:
                problem(rel(path), f"{doc.get('kind')} is not in namespace {namespace}")
    for resource in resources:
        if not (directory / resource).exists():
            problem(rel(directory / "kustomization.yaml"), f"resource {resource} does not exist")
    for kind in ("Namespace", "ConfigMap", "Secret", "DaemonSet", "Service", "PodDisruptionBudget"):
        if kind not in objects:
            problem("deploy/k8s", f"no {kind}")

    for path, secret in objects.get("Secret", []):
        if path.name in resources:
            problem(rel(path), "the example Secret must not be applied by kustomization.yaml")
        for key, value in (secret.get("stringData") or {}).items():
            if "REPLACE-ME" not in str(value):
                problem(rel(path), f"{key} must be a REPLACE-ME placeholder, never a real value")
        check_env_names(rel(path), (secret.get("stringData") or {}).keys(), "key")
    for path, config in objects.get("ConfigMap", []):
        check_env_names(rel(path), (config.get("data") or {}).keys(), "key")
        for key, value in (config.get("data") or {}).items():
            if not isinstance(value, str) or value == "":
                problem(rel(path), f"{key} must be a non-empty string")

    for path, daemonset in objects.get("DaemonSet", []):
        where = rel(path)
        template = daemonset["spec"]["template"]
        pod = template["spec"]
        labels = template["metadata"].get("labels", {})
        selector = daemonset["spec"]["selector"]["matchLabels"]
        if any(labels.get(k) != v for k, v in selector.items()):
            problem(where, "selector does not match the pod labels")
        if pod.get("hostNetwork") is not True:
            problem(where, "hostNetwork must be true (one relay per node on its own address)")
        if pod.get("dnsPolicy") != "ClusterFirstWithHostNet":
            problem(where, "dnsPolicy must be ClusterFirstWithHostNet with hostNetwork")
        annotations = template["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/path") != "/metrics":
            problem(where, "missing Prometheus scrape annotations")
        pod_security = pod.get("securityContext", {})
        if pod_security.get("runAsNonRoot") is not True:
            problem(where, "runAsNonRoot must be true")
        if runtime_uid is not None and pod_security.get("runAsUser") != runtime_uid:
            problem(where, f"runAsUser must be the image's USER {runtime_uid}")
        for container in pod["containers"]:
            names = {p["name"] for p in container.get("ports", [])}
            ready = container.get("readinessProbe", {}).get("httpGet", {})
            live = container.get("livenessProbe", {}).get("httpGet", {})
            if ready.get("path") != "/health/ready":
                problem(where, "readinessProbe must GET /health/ready")
            if live.get("path") != "/health/live":
                problem(where, "livenessProbe must GET /health/live (not ready: a database outage must not restart relays)")
            for probe in (ready, live):
                if probe.get("port") not in names:
                    problem(where, f"probe port {probe.get('port')} is not a container port")
            if not container.get("resources", {}).get("requests"):
                problem(where, "no resource requests")
            security = container.get("securityContext", {})
            if security.get("readOnlyRootFilesystem") is not True:
                problem(where, "readOnlyRootFilesystem must be true")
            if security.get("allowPrivilegeEscalation") is not False:
                problem(where, "allowPrivilegeEscalation must be false")
            if "ALL" not in security.get("capabilities", {}).get("drop", []):
                problem(where, "capabilities must drop ALL")
            check_env_names(where, [e["name"] for e in container.get("env", [])], "env")
            # Without a writable data directory the host id must come from the environment
            # or from a .env an init container writes where this container starts.
            if "BOSON_HOST_ID" not in {e["name"] for e in container.get("env", [])}:
                written = []
                for init in pod.get("initContainers", []):
                    script = " ".join(init.get("command", []) + init.get("args", []))
                    check_env_names(where, re.findall(r"\b(BOSON_[A-Z0-9_]+)=", script),
                                    f"init container {init['name']} writes")
                    mounts = {m["mountPath"] for m in init.get("volumeMounts", [])}
                    target = re.search(r">\s*(\S+)/\.env\b", script)
                    if "BOSON_HOST_ID=" in script and target and target[1] in mounts:
                        written.append(target[1])
                if container.get("workingDir") not in written:
                    problem(where, "BOSON_HOST_ID is neither set nor written by an init container "
                                   "into the .env of the container's workingDir")
        for kind in ("Service", "PodDisruptionBudget"):
            for other_path, other in objects.get(kind, []):
                chosen = other["spec"]["selector"]
                chosen = chosen.get("matchLabels", chosen)
                if any(labels.get(k) != v for k, v in chosen.items()):
                    problem(rel(other_path), f"{kind} selector does not match the DaemonSet's pods")

    kubectl = shutil.which("kubectl")
    if kubectl:
        result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
        if result.returncode != 0:
            problem("deploy/k8s", f"kubectl kustomize: {result.stderr.strip()}")
        else:
            passed.append("kubectl kustomize deploy/k8s")
    passed.append("deploy/k8s: kinds, namespace, probes, securityContext, selectors, env names, placeholders")


# ---- systemd, allinone, scripts -------------------------------------------------------------

def check_systemd() -> None:
    path = DEPLOY / "systemd/bosonserver.service"
    settings: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    required = {
        "ProtectSystem": "strict", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
        "Restart": "on-failure", "StateDirectory": None, "LimitNOFILE": None, "EnvironmentFile": None,
    }
    for key, value in required.items():
        if key not in settings or (value is not None and settings[key][-1] != value):
            problem(rel(path), f"needs {key}={value if value is not None else '...'}")
    if "DynamicUser" not in settings and "User" not in settings:
        problem(rel(path), "needs DynamicUser=yes or a dedicated User=")
    for value in settings.get("Environment", []):
        check_env_names(rel(path), re.findall(r"([A-Z][A-Z0-9_]*)=", value), "Environment")
    example = DEPLOY / "systemd/bosonserver.env.example"
    check_env_names(rel(example), re.findall(r"^#?([A-Z][A-Z0-9_]*)=", example.read_text(), re.M), "variable")
    passed.append("systemd unit: hardening settings present, env names exist")


def check_scripts() -> None:
    for path in sorted(DEPLOY.rglob("*.sh")):
        shell = "bash" if path.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash") else "sh"
        result = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            problem(rel(path), f"{shell} -n: {result.stderr.strip()}")
    for path in sorted(DEPLOY.rglob("*.py")):
        try:
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
        except SyntaxError as error:
            problem(rel(path), f"does not compile: {error}")
    if shutil.which("shellcheck"):
        scripts = [str(p) for p in sorted(DEPLOY.rglob("*.sh"))]
        result = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
        if result.returncode != 0:
            problem("deploy", f"shellcheck:\n{result.stdout}")
    supervisord = (DEPLOY / "allinone/supervisord.conf").read_text(encoding="utf-8")
    for program in ("postgres", "redis", "bosonserver"):
        if f"[program:{program}]" not in supervisord:
            problem("deploy/allinone/supervisord.conf", f"no program {program}")
    passed.append("scripts parse; allinone runs postgres, redis and bosonserver")


def main() -> int:
    documents = load_all()
    check_env_example()
    runtime_uid = check_dockerfile()
    check_compose(documents)
    check_prometheus_and_grafana(documents)
    check_k8s(documents, runtime_uid)
    check_systemd()
    check_scripts()
    for line in passed:
        print(f"ok: {line}")
    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("deploy/check: all good")
    return 0


if __name__ == "__main__":
    sys.exit(main())
