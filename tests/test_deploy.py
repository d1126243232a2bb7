"""The deployment examples under ``deploy/``, checked as far as schemas allow: Kubernetes'
own resources against Kubernetes' schemas (kubernetes-validate), Istio's against the schemas of
Istio's CRDs (a copy in ``tests/schemas``), the Istio extension provider against the fields
and rules of Istio's ext_authz builder, the Envoy bootstrap against Envoy itself and against
what ``envoy-config`` prints, and every proxy config against ``check``."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from proxy.config import parse_config
from proxy.core.canonical import _WATCHED
from proxy.core.catalog import AUTHZ_PREFIX
from proxy.envoy.bootstrap import Origin, bootstrap, parse_listen
from tests.docs import page
from tests.processes import ROOT, envoy_validate, run
from tests.tables import APP_LINES, STACKS

DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.30.0"
ISTIO_SCHEMAS: dict[str, Any] = json.loads(
    (ROOT / "tests" / "schemas" / "istio-crds.json").read_text()
)["schemas"]
# The manifests (kubectl apply -f / -k): every YAML document in them is a resource.
KUBERNETES = DEPLOY / "kubernetes"
VARIANTS = sorted(folder.name for folder in KUBERNETES.iterdir() if folder.is_dir())
MANIFESTS = [
    DEPLOY / "envoy" / "deployment.yaml",
    *sorted((DEPLOY / "istio" / "resources").glob("*.yaml")),
    *(
        KUBERNETES / variant / name
        for variant in VARIANTS
        for name in yaml.safe_load((KUBERNETES / variant / "kustomization.yaml").read_text())[
            "resources"
        ]
    ),
    *sorted(KUBERNETES.glob("*/secret.example.yaml")),
]


def documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


RESOURCES = [
    (f"{path.relative_to(DEPLOY)}:{document['kind']}/{document['metadata']['name']}", document)
    for path in MANIFESTS
    for document in documents(path)
]


def strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as ``kubectl apply --validate=strict`` does,
    rather than dropping them silently."""
    if isinstance(schema, dict):
        found = {key: strict(value) for key, value in schema.items()}
        if "properties" in found and not found.get("x-kubernetes-preserve-unknown-fields"):
            found.setdefault("additionalProperties", False)
        return found
    if isinstance(schema, list):
        return [strict(value) for value in schema]
    return schema


@pytest.mark.parametrize("document", [r[1] for r in RESOURCES], ids=[r[0] for r in RESOURCES])
def test_each_resource_matches_its_schema(document: dict[str, Any]) -> None:
    group_version, kind = document["apiVersion"], document["kind"]
    if group_version.endswith("istio.io/v1"):
        schema = ISTIO_SCHEMAS[f"{group_version}/{kind}"]
        jsonschema.validate(document["spec"], strict(schema["properties"]["spec"]))
        assert set(document) <= {"apiVersion", "kind", "metadata", "spec"}
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_a_typo_is_caught() -> None:
    """The checks above refuse what Kubernetes or Istio would not take."""
    policy = next(d for _, d in RESOURCES if d["kind"] == "AuthorizationPolicy")
    schema = strict(ISTIO_SCHEMAS["security.istio.io/v1/AuthorizationPolicy"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**policy["spec"], "acton": "CUSTOM"}, schema["properties"]["spec"])
    deployment = next(d for _, d in RESOURCES if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# The fields of envoyExtAuthzHttp that Istio reads (pilot/pkg/security/authz/builder/extauthz.go)
# and their types.
EXT_AUTHZ_HTTP_FIELDS = {
    "service": str, "port": int, "timeout": str, "pathPrefix": str, "failOpen": bool,
    "statusOnError": str, "includeRequestHeadersInCheck": list,
    "includeAdditionalHeadersInCheck": dict, "includeRequestBodyInCheck": dict,
    "headersToUpstreamOnAllow": list, "headersToDownstreamOnDeny": list,
    "headersToDownstreamOnAllow": list,
}  # fmt: skip


def istio_provider() -> dict[str, Any]:
    [operator] = documents(DEPLOY / "istio" / "istio-operator.yaml")
    assert operator["kind"] == "IstioOperator"
    [provider] = operator["spec"]["meshConfig"]["extensionProviders"]
    assert provider["name"] == "pipedrive-scope-proxy"
    found: dict[str, Any] = provider["envoyExtAuthzHttp"]
    return found


def istio_prefix_matches(pattern: str, name: str) -> bool:
    """How Istio reads a header pattern: ``x*`` a prefix, ``*x`` a suffix, else exact; any case."""
    name, pattern = name.lower(), pattern.lower()
    if pattern.startswith("*"):
        return name.endswith(pattern[1:])
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


def test_the_istio_provider_asks_the_way_envoy_config_does() -> None:
    provider = istio_provider()
    for field, value in provider.items():
        assert isinstance(value, EXT_AUTHZ_HTTP_FIELDS[field]), field
    # Istio's own rules for the provider.
    assert provider["pathPrefix"].startswith("/")
    assert int(provider["statusOnError"]) == 503
    patterns = [*provider["includeRequestHeadersInCheck"], *provider["headersToDownstreamOnDeny"],
                *provider["headersToDownstreamOnAllow"]]  # fmt: skip
    assert "*" not in patterns, "Istio refuses a lone '*'"
    # The same check as the bootstrap envoy-config prints.
    config = parse_config({}, env={})
    generated = bootstrap(config, parse_listen("0.0.0.0:10000"), Origin("http", "proxy", 8080))
    manager = generated["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    [check] = [
        f["typed_config"]
        for f in manager["typed_config"]["http_filters"]
        if f["name"] == "envoy.filters.http.ext_authz"
    ]
    assert provider["pathPrefix"] == AUTHZ_PREFIX == check["http_service"]["path_prefix"]
    assert provider["failOpen"] is check["failure_mode_allow"] is False
    body = provider["includeRequestBodyInCheck"]
    assert (body["maxRequestBytes"], body["allowPartialMessage"]) == (
        check["with_request_body"]["max_request_bytes"],
        True,
    )
    response = check["http_service"]["authorization_response"]
    on_deny = {p["exact"].lower() for p in response["allowed_client_headers"]["patterns"]}
    on_allow = {
        p["exact"].lower() for p in response["allowed_client_headers_on_success"]["patterns"]
    }
    assert set(provider["headersToDownstreamOnDeny"]) == on_deny
    assert set(provider["headersToDownstreamOnAllow"]) == on_allow
    # Every header the proxy decides on reaches the check, whatever its spelling's first letter.
    decided = {name for name in _WATCHED if "_" not in name} | {"x-api-token", "authorization"}
    for name in decided | {"X-Anything", "9lives", "-dash", "~tilde"}:
        assert any(
            istio_prefix_matches(p, name) for p in provider["includeRequestHeadersInCheck"]
        ), name


def test_the_istio_pieces_name_each_other() -> None:
    provider = istio_provider()
    found = {d["kind"] + "/" + d["metadata"]["name"]: d for _, d in RESOURCES}
    policy = found["AuthorizationPolicy/pipedrive-scopes"]["spec"]
    assert (policy["action"], policy["provider"]["name"]) == ("CUSTOM", "pipedrive-scope-proxy")
    service = found["Service/pipedrive-scope-proxy"]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert provider["service"] == host
    assert provider["port"] in {port["port"] for port in service["spec"]["ports"]}
    config = found["ConfigMap/pipedrive-scope-proxy"]["data"]["proxy.yaml"]
    parse_config(yaml.safe_load(config), env={})  # a config the proxy accepts
    assert yaml.safe_load(config)["listen"]["port"] == provider["port"]


def test_the_istio_example_keeps_the_proxys_own_endpoints_off_the_mesh() -> None:
    """/_proxy/* (the report and its reset among them) is served on an admin port that the
    Service does not name, probes and metrics use it, and a DENY policy refuses the report to
    every request that reaches that port through the sidecar."""
    found = {d["kind"] + "/" + d["metadata"]["name"]: d for _, d in RESOURCES}
    config = parse_config(
        yaml.safe_load(found["ConfigMap/pipedrive-scope-proxy"]["data"]["proxy.yaml"]), env={}
    )
    assert config.admin_listen is not None
    admin = config.admin_listen.port
    assert admin != config.listen.port
    service = found["Service/pipedrive-scope-proxy"]["spec"]["ports"]
    assert {port["port"] for port in service} == {config.listen.port}
    assert {port["targetPort"] for port in service} == {config.listen.port}
    pod = found["Deployment/pipedrive-scope-proxy"]["spec"]["template"]
    [container] = pod["spec"]["containers"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == admin
        assert container[probe]["httpGet"]["path"].startswith("/_proxy/")
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(admin)
    policy = found["AuthorizationPolicy/pipedrive-scope-proxy-admin"]["spec"]
    assert policy["action"] == "DENY"
    assert policy["selector"]["matchLabels"] == pod["metadata"]["labels"]
    [rule] = policy["rules"]
    [operation] = [to["operation"] for to in rule["to"]]
    assert operation["ports"] == [str(admin)]
    for path in ("/_proxy/report", "/_proxy/report.html", "/_proxy/report/reset"):
        assert any(_istio_path_matches(pattern, path) for pattern in operation["paths"]), path
    assert not any(_istio_path_matches(p, "/_proxy/health") for p in operation["paths"])


def _istio_path_matches(pattern: str, path: str) -> bool:
    """Istio's path match: exact, a prefix ending in '*', or a suffix starting with it."""
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return path.endswith(pattern[1:])
    return path == pattern


def test_the_envoy_sidecar_bootstrap_is_what_envoy_config_prints_and_envoy_accepts() -> None:
    folder = DEPLOY / "envoy"
    checked = run("check", "--config", str(folder / "proxy.yaml"))
    assert checked.returncode == 0, checked.stderr
    printed = run(
        "envoy-config", "--config", str(folder / "proxy.yaml"), "--listen", "127.0.0.1:10000",
        "--authz", "http://127.0.0.1:8080",
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    shipped = (folder / "envoy.yaml").read_text()
    assert yaml.safe_load(shipped) == yaml.safe_load(printed.stdout), (
        "deploy/envoy/envoy.yaml is stale: print it again with envoy-config (see kustomization)"
    )
    envoy_validate(folder / "envoy.yaml")
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    [generator] = kustomization["configMapGenerator"]
    assert sorted(generator["files"]) == ["envoy.yaml", "proxy.yaml"]
    assert all((folder / name).exists() for name in kustomization["resources"])
    deployment = documents(folder / "deployment.yaml")[0]
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == generator["name"]


# The image's user (Dockerfile USER) and where it reads its config.
IMAGE_UID = 10001
CONFIG_DIR = "/etc/pipedrive-scope-proxy"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_kubernetes_sidecar_agrees_with_its_config(variant: str) -> None:
    """Probes, ports, mounts, secrets and annotations name what the proxy config inside the
    ConfigMap really sets; ``check`` accepts that config."""
    folder = KUBERNETES / variant
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    [generator] = kustomization["configMapGenerator"]
    assert generator["files"] == ["proxy.yaml"]
    resources = {
        f"{d['kind']}/{d['metadata']['name']}": d
        for name in kustomization["resources"]
        for d in documents(folder / name)
    }
    pod = resources["Deployment/my-app"]["spec"]["template"]
    # A native sidecar: an init container that keeps running, started before the app.
    [sidecar] = pod["spec"]["initContainers"]
    assert (sidecar["name"], sidecar["restartPolicy"]) == ("scope-proxy", "Always")
    [app] = pod["spec"]["containers"]
    [image] = kustomization["images"]
    assert sidecar["image"].split(":")[0] == image["name"]

    # The config, with every token_env the sidecar is given from its Secret. The Secret is
    # made outside version control (README); the example shows its name and key.
    secrets = {
        f"Secret/{d['metadata']['name']}": d
        for path in folder.glob("secret.example.yaml")
        for d in documents(path)
    }
    assert not any(name.startswith("secret") for name in kustomization["resources"])
    env = {}
    for variable in sidecar.get("env", []):
        reference = variable["valueFrom"]["secretKeyRef"]
        secret = secrets[f"Secret/{reference['name']}"]
        env[variable["name"]] = secret["stringData"][reference["key"]]
        command = f"kubectl create secret generic {reference['name']} --from-literal="
        assert f"{command}{reference['key']}=..." in page("deployment.md")
    checked = run("check", "--config", str(folder / "proxy.yaml"), env=env)
    assert checked.returncode == 0, checked.stderr
    config = parse_config(yaml.safe_load((folder / "proxy.yaml").read_text()), env=env)

    # The ConfigMap is mounted where the image reads its config; /tmp is writable.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in sidecar["volumeMounts"]}
    assert mounts[CONFIG_DIR]["configMap"]["name"] == generator["name"]
    assert "emptyDir" in mounts["/tmp"]
    assert sidecar["args"] == ["serve"]  # the image's default config path

    # The app reaches the proxy on the pod's loopback, at the port the config listens on.
    assert config.listen.host == "127.0.0.1"
    [base_url] = [e["value"] for e in app["env"] if e["name"] == "PIPEDRIVE_BASE_URL"]
    assert base_url == f"http://127.0.0.1:{config.listen.port}"

    # Probes and scrapes on the admin listener, which the kubelet can reach.
    assert config.admin_listen is not None
    assert config.admin_listen.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"admin": config.admin_listen.port}
    health = {"path": "/_proxy/health", "port": "admin"}
    assert sidecar["startupProbe"]["httpGet"] == health
    assert sidecar["livenessProbe"]["httpGet"] == health
    # Readiness includes the store only where the store lives in the proxy itself: a shared
    # Redis that is down must not take every replica of the app out of its Service.
    ready = "/_proxy/ready" if config.store.kind in ("memory", "sqlite") else "/_proxy/health"
    assert sidecar["readinessProbe"]["httpGet"] == {"path": ready, "port": "admin"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == config.admin_listen.port
    assert annotations["prometheus.io/path"] == "/_proxy/metrics"

    # The image's user, by number, so that runAsNonRoot can check it; only for the proxy.
    assert "securityContext" not in pod["spec"], "the app's own user is the app's business"
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert sidecar["securityContext"]["runAsUser"] == IMAGE_UID
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"\nUSER {IMAGE_UID}:{IMAGE_UID}\n" in dockerfile
    assert f"PIPEDRIVE_SCOPE_PROXY_CONFIG={CONFIG_DIR}/proxy.yaml" in dockerfile
    # The drain (30 s) fits in the grace period.
    assert pod["spec"]["terminationGracePeriodSeconds"] > 30

    # Resources above what bench/performance.py measured (bench/README.md).
    requests, limits = sidecar["resources"]["requests"], sidecar["resources"]["limits"]
    measured = max(readme_memory_figures())
    assert mebibytes(requests["memory"]) >= measured
    assert mebibytes(limits["memory"]) >= 2 * measured

    replicas = resources["Deployment/my-app"]["spec"]["replicas"]
    if replicas > 1:
        # Several proxies learn and share tokens through one Redis, the one deployed here,
        # which only the app's pods may reach.
        assert config.store.kind == "redis"
        store = urlsplit(config.store.url)
        service = resources[f"Service/{store.hostname}"]
        assert store.port in {p["port"] for p in service["spec"]["ports"]}
        redis_pod = resources[f"Deployment/{store.hostname}"]["spec"]["template"]
        assert redis_pod["metadata"]["labels"].items() >= service["spec"]["selector"].items()
        policy = resources[f"NetworkPolicy/{store.hostname}"]["spec"]
        assert policy["podSelector"]["matchLabels"] == service["spec"]["selector"]
        [rule] = policy["ingress"]
        assert [p["port"] for p in rule["ports"]] == [store.port]
        assert [f["podSelector"]["matchLabels"] for f in rule["from"]] == [
            pod["metadata"]["labels"]
        ]


def mebibytes(quantity: str) -> float:
    assert quantity.endswith("Mi"), quantity
    return float(quantity[:-2])


def readme_memory_figures() -> list[float]:
    """The resident memory the benchmark's latest run reports (bench/README.md)."""
    readme = (ROOT / "bench" / "README.md").read_text()
    figures = re.findall(r"^\| resident memory [^|]*\| ([0-9.]+) MiB \|", readme, re.MULTILINE)
    assert len(figures) == 2, figures
    return [float(figure) for figure in figures]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[list[str]]:
    """Shell command lines of a block, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_every_file_the_deploy_section_names_exists() -> None:
    section = page("deployment.md")
    named = set(re.findall(r"`((?:config|deploy|tests|bench)/[\w./-]+|docker-compose[\w.]*\.yml"
                           r"|Dockerfile)`", section))  # fmt: skip
    named |= set(re.findall(r"\b((?:config|deploy)/[\w./-]+\w)", section))
    assert len(named) >= 8, named
    for name in named:
        assert (ROOT / name).exists(), name


def test_every_command_the_deploy_section_shows_is_the_one_the_tests_run() -> None:
    """The Deploy section's commands, each matched to what a test does with it: the image
    (tests/test_image.py builds and runs this Dockerfile), compose (tests/test_compose.py runs
    these files) and Kubernetes (the kustomizations checked above)."""
    section = page("deployment.md")
    shown = [argv for block in code_blocks(section, "sh") for argv in commands(block)]
    seen = set()
    for argv in shown:
        env = [word for word in argv if re.fullmatch(r"[A-Z_]+=.*", word)]
        argv = argv[len(env) :]
        if argv[:2] == ["docker", "build"]:
            assert argv[-1] == "."
            seen.add("build")
        elif argv[:2] == ["docker", "run"]:
            mount = argv[argv.index("-v") + 1].replace("$PWD/", "")
            source, target, mode = mount.split(":")
            assert (target, mode) == (CONFIG_DIR + "/proxy.yaml", "ro")
            checked = run("check", "--config", str(ROOT / source))
            assert checked.returncode == 0, checked.stderr
            port = parse_config(yaml.safe_load((ROOT / source).read_text()), env={}).listen.port
            assert argv[argv.index("-p") + 1] == f"127.0.0.1:{port}:{port}"
            seen.add("run")
        elif argv[:2] == ["docker", "compose"]:
            files = [argv[i + 1] for i, word in enumerate(argv) if word == "-f"]
            assert files in (STACKS["report"], STACKS["enforce"], []), files
            assert argv[-2:] == ["up", "--build"]
            seen.add(f"compose {files}")
        elif argv[:3] == ["kubectl", "create", "secret"]:
            assert argv[3:5] == ["generic", "my-app-pipedrive-tokens"]  # checked above
            seen.add("secret")
        elif argv[:2] == ["kubectl", "apply"]:
            assert argv[2] == "-k"
            assert Path(argv[3]).parent == Path("deploy/kubernetes")
            assert Path(argv[3]).name in VARIANTS
            seen.add(argv[3])
        else:
            raise AssertionError(f"a command no test covers: {argv}")
    assert len(seen) == 7, seen
    # The example app's output, as tests/test_compose.py sees it.
    [output] = code_blocks(section, "text")
    assert [line.split("| ", 1)[1] for line in output.splitlines()] == APP_LINES
    # The admin port's snippet is a config the proxy accepts (the TLS one: tests/test_readme.py).
    snippet, tls = code_blocks(section, "yaml")
    config = parse_config(yaml.safe_load(snippet), env={})
    assert config.admin_listen is not None
    assert "tls" in yaml.safe_load(tls)["listen"]
    assert dockerfile_args() == {"PYTHON_IMAGE": "python:3.11-slim"}


def dockerfile_args() -> dict[str, str]:
    found = re.findall(r"^ARG (\w+)=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    return dict(found)


def test_no_pod_gets_service_link_variables_the_proxy_would_read_as_settings() -> None:
    """A Service named pipedrive-scope-proxy makes Kubernetes inject PIPEDRIVE_SCOPE_PROXY_PORT
    and kin into every pod of the namespace, in the proxy's settings prefix."""
    pods = [
        document["spec"]["template"]["spec"]
        for _, document in RESOURCES
        if document["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}
    ]
    assert len(pods) >= 4
    assert all(pod.get("enableServiceLinks") is False for pod in pods)
