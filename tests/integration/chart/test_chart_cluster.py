"""The Helm chart against the local real control plane (or any cluster in $KUBECONFIG).

One release is installed for the module (custom metrics API off: other tests own those
cluster-wide APIServices). On the local control plane (no images can run there) the injector runs
as a local process on loopback with the chart's own generated TLS Secret and ConfigMap, and the
chart's webhook points at it (injector.url). With real images (WSGAUGE_IMAGE_REGISTRY set, as
`make kind-e2e` does) the chart's own injector Deployment serves the webhook instead. A second,
short-lived release checks the APIService part when no other server holds custom.metrics.k8s.io.
The last test uninstalls and checks that only the kept CRD remains.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets
from chart_cluster_harness import (
    CHART,
    CRD_NAME,
    LocalInjector,
    apiservices_present,
    can_i,
    create_pod,
    free_loopback_port,
    helm,
    kubectl_input,
    leftovers,
    pod_manifest,
    uninstall,
)
from wsgauge_devcluster.images import image_tag, project_version
from wsgauge_devcluster.testing import KubeCluster, eventually

GATE = {"conditionType": "wsgauge.dev/connections-ok"}
RUN_LABEL_KEY = "wsgauge\\.dev/chart-test-run"
"""The per-run namespace label, escaped for helm --set."""
RELEASE_KINDS = (
    "clusterroles",
    "clusterrolebindings",
    "rolebindings",
    "mutatingwebhookconfigurations",
    "apiservices",
    "deployments",
    "services",
    "secrets",
    "configmaps",
    "serviceaccounts",
    "poddisruptionbudgets",
)


@dataclass
class Release:
    """The module's installed release."""

    name: str
    namespace: str
    apps: str
    """A namespace opted in to injection."""
    plain: str
    """A namespace not opted in."""
    injector: LocalInjector | None
    """The local injector process; None when the chart's injector Deployment serves."""

    def stop_injector(self, kube: KubeCluster) -> None:
        """Take the webhook's server away."""
        if self.injector is not None:
            self.injector.stop()
            return
        deployment = f"deployment/{self.name}-wsgauge-injector"
        kube.kubectl("scale", deployment, "--replicas=0", "-n", self.namespace)
        eventually(
            lambda: not kube.kubectl(
                "get", "pods", "-n", self.namespace, "-o", "name",
                "-l", "app.kubernetes.io/component=injector",
            ).stdout.strip(),
            timeout=90,
            what="injector pods gone",
        )  # fmt: skip

    @property
    def operator_sa(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}-wsgauge-operator"


@pytest.fixture(scope="module")
def release(kube: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    name, namespace = f"wsg-{suffix}", f"t-chart-{suffix}"
    apps, plain = f"t-chart-apps-{suffix}", f"t-chart-plain-{suffix}"
    for ns in (namespace, apps, plain):
        kube.kubectl("create", "namespace", ns)
    # The default opt-in label plus one of this run only: a webhook left behind by an aborted
    # run (failurePolicy Fail, its injector gone) can then never touch this run's namespaces.
    run_label = f"wsgauge.dev/chart-test-run={suffix}"
    kube.kubectl("label", "namespace", apps, "wsgauge.dev/injection=enabled", run_label)
    port = free_loopback_port()
    # The chart's own images: the local ones on our devcluster (loaded into its real node), or
    # WSGAUGE_IMAGE_REGISTRY/TAG elsewhere; without either, a local injector process stands in.
    registry = os.environ.get("WSGAUGE_IMAGE_REGISTRY") or ("wsgauge" if kube.state_dir else "")
    if registry:
        tag = os.environ.get("WSGAUGE_IMAGE_TAG") or image_tag()
        where = ["--set", f"image.registry={registry}", "--set", f"image.tag={tag}"]
        where += ["--wait", "--timeout", "180s"]
    else:
        where = ["--set", f"injector.url=https://127.0.0.1:{port}/mutate"]
    injector: LocalInjector | None = None
    try:
        helm(
            kube,
            "install", name, str(CHART),
            "--namespace", namespace,
            "--take-ownership",  # the CRD may already be there (applied from crds/ by other tests)
            "--set", "metricsApi.enabled=false",
            "--set", "injector.replicas=1",
            # --set-string: a suffix of digits only (e.g. 156023) must stay a string label value
            "--set-string", f"injector.namespaceSelector.matchLabels.{RUN_LABEL_KEY}={suffix}",
            *where,
        )  # fmt: skip
        if not registry:
            injector = LocalInjector(
                kube, namespace, name, port, tmp_path_factory.mktemp("injector")
            )
        handle = Release(name, namespace, apps, plain, injector)
        yield handle
    finally:
        if injector is not None:
            injector.stop()
        uninstall(kube, name, namespace)
        for ns in (namespace, apps, plain):
            kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _container_names(pod: dict[str, Any]) -> list[str]:
    return [c["name"] for c in pod["spec"]["containers"]]


def test_install_creates_crd_rbac_webhook_and_workloads(
    kube: KubeCluster, release: Release
) -> None:
    crd = kube.get_json("crd", CRD_NAME)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name
    prefix = f"{release.name}-wsgauge"
    for kind, name in (
        ("clusterrole", f"{prefix}-operator"),
        ("clusterrole", f"{prefix}-operator-cluster"),
        ("clusterrolebinding", f"{prefix}-operator"),
        ("clusterrolebinding", f"{prefix}-operator-cluster"),
        ("mutatingwebhookconfiguration", f"{prefix}-injector"),
    ):
        kube.kubectl("get", kind, name)
    for kind, name in (
        ("serviceaccount", f"{prefix}-operator"),
        ("deployment", f"{prefix}-operator"),
        ("deployment", f"{prefix}-injector"),
        ("service", f"{prefix}-operator"),
        ("service", f"{prefix}-injector"),
        ("secret", f"{prefix}-injector-tls"),
    ):
        kube.kubectl("get", kind, name, "-n", release.namespace)
    webhook = kube.get_json("mutatingwebhookconfiguration", f"{prefix}-injector")["webhooks"][0]
    if release.injector is not None:
        assert webhook["clientConfig"]["url"] == f"https://127.0.0.1:{release.injector.port}/mutate"
    else:
        assert webhook["clientConfig"]["service"]["name"] == f"{prefix}-injector"
    # metricsApi.enabled=false: no APIService, no metrics Service
    assert kube.kubectl("get", "service", f"{prefix}-metrics-api", "-n", release.namespace,
                        check=False).returncode != 0  # fmt: skip
    listed = kube.kubectl("get", "connectionstats", "-A").returncode
    assert listed == 0
    notes = helm(kube, "get", "notes", release.name, "--namespace", release.namespace).stdout
    assert "kubectl get connectionstats" in notes
    assert "kubectl label namespace <your-namespace> " in notes
    assert "wsgauge.dev/injection=enabled" in notes
    assert "custom metrics API is OFF" in notes


def test_annotated_pod_comes_back_with_sidecar_and_readiness_gate(
    kube: KubeCluster, release: Release
) -> None:
    manifest = pod_manifest(
        "chat-1",
        release.apps,
        {"wsgauge.dev/inject": "true", "wsgauge.dev/topic": "path:^/ws/([^/]+)",
         "wsgauge.dev/max-connections": "5000"},
    )  # fmt: skip
    result = create_pod(kube, manifest)
    assert result.returncode == 0, result.stderr
    pod = json.loads(result.stdout)
    assert _container_names(pod) == ["app", "wsgauge-sidecar"]
    assert pod["spec"]["readinessGates"] == [GATE]
    sidecar = pod["spec"]["containers"][1]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["WSGAUGE_TOPIC"] == "path:^/ws/([^/]+)"
    assert env["WSGAUGE_MAX_CONNECTIONS"] == "5000"
    assert {p["name"] for p in sidecar["ports"]} == {"wsgauge-http", "wsgauge-admin"}
    assert sidecar["image"].endswith(
        f"/sidecar:{os.environ.get('WSGAUGE_IMAGE_TAG') or image_tag()}"
    )
    preStop = pod["spec"]["containers"][0]["lifecycle"]["preStop"]
    assert preStop == {"sleep": {"seconds": 17}}
    assert pod["metadata"]["annotations"]["wsgauge.dev/injected"] == sidecar["image"]
    # what the API server stored is what a later read returns
    stored = kube.get_json("pod", "chat-1", "-n", release.apps)
    assert _container_names(stored) == ["app", "wsgauge-sidecar"]
    assert stored["spec"]["readinessGates"] == [GATE]


def _stats(ip: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{ip}:9090/stats", timeout=3) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except OSError:
        return None


async def _count_one_socket(ip: str) -> dict[str, Any]:
    async with websockets.connect(f"ws://{ip}:8080/ws/stream", open_timeout=10) as socket:
        await socket.send("hello")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            document = await asyncio.to_thread(_stats, ip)
            if document and document["topics"] == {"stream": 1}:
                return document
            await asyncio.sleep(0.2)
    raise AssertionError("the injected sidecar never counted the socket")


def test_injected_pod_runs_and_its_sidecar_counts(kube: KubeCluster, release: Release) -> None:
    if kube.state_dir is None:
        pytest.skip("runs the demo app from the local sidecar image: local devcluster only")
    manifest = pod_manifest(
        "live-1",
        release.apps,
        {"wsgauge.dev/inject": "true", "wsgauge.dev/topic": "path:^/ws/([^/]+)",
         "wsgauge.dev/drain-grace": "0", "wsgauge.dev/drain-spread": "1"},
    )  # fmt: skip
    del manifest["spec"]["nodeSelector"]
    app = manifest["spec"]["containers"][0]
    app["image"] = f"wsgauge/sidecar:{project_version()}"  # the demo app ships in it
    app["command"] = ["python", "-m", "wsgauge_sidecar.demo_app", "--listen", "127.0.0.1:8081"]
    result = create_pod(kube, manifest)
    assert result.returncode == 0, result.stderr
    try:

        def containers_ready() -> dict[str, Any] | None:
            pod: dict[str, Any] = kube.get_json("pod", "live-1", "-n", release.apps)
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            return pod if conditions.get("ContainersReady") == "True" else None

        pod = eventually(containers_ready, timeout=90, what="injected pod's containers ready")
        # the readiness gate holds the pod back until an operator sets the condition
        conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert conditions["Ready"] == "False"
        ip = pod["status"]["podIP"]
        document = asyncio.run(_count_one_socket(ip))
        assert document["pod"] == "live-1"
        assert document["namespace"] == release.apps
        assert document["node"] == pod["spec"]["nodeName"]
    finally:
        kube.kubectl("delete", "pod", "live-1", "-n", release.apps, "--wait=false", check=False)


def test_pods_without_the_annotation_or_outside_opted_in_namespaces_are_untouched(
    kube: KubeCluster, release: Release
) -> None:
    for manifest in (
        pod_manifest("plain-1", release.apps),
        pod_manifest("plain-2", release.apps, {"wsgauge.dev/inject": "false"}),
        pod_manifest("elsewhere-1", release.plain, {"wsgauge.dev/inject": "true"}),
    ):
        result = create_pod(kube, manifest)
        assert result.returncode == 0, result.stderr
        pod = json.loads(result.stdout)
        assert _container_names(pod) == ["app"]
        assert "readinessGates" not in pod["spec"]
        assert "lifecycle" not in pod["spec"]["containers"][0]
        assert "wsgauge.dev/injected" not in (pod["metadata"].get("annotations") or {})


def test_invalid_override_is_refused_with_the_annotation_named(
    kube: KubeCluster, release: Release
) -> None:
    manifest = pod_manifest(
        "bad-1", release.apps, {"wsgauge.dev/inject": "true", "wsgauge.dev/drain-grace": "soon"}
    )
    result = create_pod(kube, manifest)
    assert result.returncode != 0
    assert "wsgauge.dev/drain-grace" in result.stderr


def test_operator_service_account_can_do_what_it_needs_and_nothing_else(
    kube: KubeCluster, release: Release
) -> None:
    sa = release.operator_sa
    lease = f"{release.name}-wsgauge-operator"
    allowed = [
        ("list", "pods", "-A"),
        ("watch", "pods", "-A"),
        ("patch", "pods", "-n", release.apps),
        ("patch", "pods", "--subresource=status", "-n", release.apps),
        ("watch", "connectionstats.wsgauge.dev", "-A"),
        ("patch", "connectionstats.wsgauge.dev", "--subresource=status", "-n", release.apps),
        ("create", "events.events.k8s.io", "-n", release.apps),
        ("create", "horizontalpodautoscalers.autoscaling", "-n", release.apps),
        ("delete", "horizontalpodautoscalers.autoscaling", "-n", release.apps),
        ("update", "horizontalpodautoscalers.autoscaling", "-n", release.apps),
        ("get", "horizontalpodautoscalers.autoscaling", "-n", release.apps),
        ("get", "deployments.apps", "--subresource=scale", "-n", release.apps),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
        # leader election: its own Lease in the release namespace
        ("get", f"leases.coordination.k8s.io/{lease}", "-n", release.namespace),
        ("update", f"leases.coordination.k8s.io/{lease}", "-n", release.namespace),
        ("create", "leases.coordination.k8s.io", "-n", release.namespace),
    ]
    denied = [
        ("get", "leases.coordination.k8s.io/kube-controller-manager", "-n", "kube-system"),
        ("update", "leases.coordination.k8s.io/kube-scheduler", "-n", "kube-system"),
        ("update", f"leases.coordination.k8s.io/{release.name}-other", "-n", release.namespace),
        ("delete", f"leases.coordination.k8s.io/{lease}", "-n", release.namespace),
        ("list", "leases.coordination.k8s.io", "-n", release.namespace),
        ("create", "leases.coordination.k8s.io", "-n", release.apps),
        ("get", f"leases.coordination.k8s.io/{lease}", "-n", release.apps),
        ("get", "secrets", "-n", release.namespace),
        ("list", "secrets", "-A"),
        ("get", "secrets", "-n", "kube-system"),
        ("delete", "pods", "-n", release.apps),
        ("create", "pods", "-n", release.apps),
        ("create", "pods", "-A"),
        ("get", "secrets", "-A"),
        ("delete", "deployments.apps", "-n", release.apps),
        ("delete", "deployments.apps", "-A"),
        ("update", "pods", "-n", release.apps),
        ("patch", "connectionstats.wsgauge.dev", "-n", release.apps),
        ("create", "connectionstats.wsgauge.dev", "-n", release.apps),
        ("delete", "connectionstats.wsgauge.dev", "-n", release.apps),
        ("patch", "deployments.apps", "-n", release.apps),
        ("update", "deployments.apps", "--subresource=scale", "-n", release.apps),
        ("get", "configmaps", "-n", release.apps),
        # HPAs are read and written by name only
        ("list", "horizontalpodautoscalers.autoscaling", "-A"),
        ("watch", "horizontalpodautoscalers.autoscaling", "-n", release.apps),
        ("patch", "horizontalpodautoscalers.autoscaling", "-n", release.apps),
        ("list", "namespaces"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("create", "events", "-n", release.apps),
        # metricsApi.enabled=false: no access to the aggregator's CA either
        ("get", "configmaps/extension-apiserver-authentication", "-n", "kube-system"),
    ]
    for args in allowed:
        assert can_i(kube, sa, *args), f"operator should be allowed: {args}"
    for args in denied:
        assert not can_i(kube, sa, *args), f"operator should be denied: {args}"
    injector_sa = f"system:serviceaccount:{release.namespace}:{release.name}-wsgauge-injector"
    assert not can_i(kube, injector_sa, "list", "pods", "-A")
    assert not can_i(kube, injector_sa, "get", "secrets", "-n", release.namespace)


def test_rendered_chart_passes_a_server_side_dry_run(kube: KubeCluster, release: Release) -> None:
    for sets in (
        [],
        [
            "--set",
            f"operator.watchNamespaces={{{release.apps},{release.plain}}}",
            "--set",
            "injector.failurePolicy=Ignore",
        ],
        ["--set", "metricsApi.enabled=false,injector.enabled=false,crds.keep=false"],
    ):
        rendered = helm(
            kube, "template", "dry", str(CHART), "--namespace", release.namespace, *sets
        ).stdout
        result = kubectl_input(kube, rendered, "apply", "--dry-run=server", "-f", "-")
        assert result.returncode == 0, result.stderr
        assert "(server dry run)" in result.stdout


def test_upgrade_keeps_the_generated_certificates(kube: KubeCluster, release: Release) -> None:
    secret_name = f"{release.name}-wsgauge-injector-tls"
    webhook_name = f"{release.name}-wsgauge-injector"
    before = kube.get_json("secret", secret_name, "-n", release.namespace)["data"]
    helm(
        kube, "upgrade", release.name, str(CHART), "--namespace", release.namespace,
        "--reuse-values", "--set", "injector.sidecar.maxTopics=50",
    )  # fmt: skip
    after = kube.get_json("secret", secret_name, "-n", release.namespace)["data"]
    assert after == before
    webhook = kube.get_json("mutatingwebhookconfiguration", webhook_name)["webhooks"][0]
    assert webhook["clientConfig"]["caBundle"] == before["ca.crt"]
    config = kube.get_json("configmap", webhook_name, "-n", release.namespace)["data"]
    assert json.loads(config["injector.json"])["maxTopics"] == 50


def test_a_down_webhook_blocks_pods_only_in_opted_in_namespaces(
    kube: KubeCluster, release: Release
) -> None:
    release.stop_injector(kube)
    elsewhere = create_pod(
        kube, pod_manifest("down-1", release.plain, {"wsgauge.dev/inject": "true"})
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    opted_in = create_pod(
        kube, pod_manifest("down-2", release.apps, {"wsgauge.dev/inject": "true"})
    )
    assert opted_in.returncode != 0  # failurePolicy Fail, inside the opted-in namespace only
    assert "inject.wsgauge.dev" in opted_in.stderr
    system = create_pod(kube, pod_manifest(f"down-{release.name}", "kube-system"))
    assert system.returncode == 0, system.stderr
    kube.kubectl("delete", "pod", f"down-{release.name}", "-n", "kube-system", "--wait=false")


def test_metrics_api_release_registers_apiservices_with_tls(
    kube: KubeCluster, tmp_path: Path, release: Release
) -> None:
    present = apiservices_present(kube)
    if present:
        pytest.skip(f"another server holds custom.metrics.k8s.io ({', '.join(present)})")
    name = f"{release.name}-m"
    try:
        helm(
            kube,
            "install", name, str(CHART),
            "--namespace", release.namespace,
            "--set", "crds.install=false,injector.enabled=false",
        )  # fmt: skip
        secret = kube.get_json("secret", f"{name}-wsgauge-metrics-api-tls", "-n", release.namespace)
        for version in ("v1beta1", "v1beta2"):
            apiservice = kube.get_json("apiservice", f"{version}.custom.metrics.k8s.io")
            spec = apiservice["spec"]
            assert spec["service"]["name"] == f"{name}-wsgauge-metrics-api"
            assert spec["service"]["namespace"] == release.namespace
            assert spec["caBundle"] == secret["data"]["ca.crt"]
            assert not spec.get("insecureSkipTLSVerify")
        sa = f"system:serviceaccount:{release.namespace}:{name}-wsgauge-operator"
        assert can_i(
            kube, sa, "get", "configmaps/extension-apiserver-authentication", "-n", "kube-system"
        )
        assert not can_i(kube, sa, "get", "configmaps/kube-proxy", "-n", "kube-system")
        assert not can_i(kube, sa, "get", "secrets", "-n", release.namespace)
    finally:
        uninstall(kube, name, release.namespace)
    eventually(
        lambda: (
            not apiservices_present(kube)
            and not leftovers(kube, RELEASE_KINDS, f"app.kubernetes.io/instance={name}")
        ),
        timeout=60,
        what="metrics API release gone",
    )


def test_zz_uninstall_leaves_only_the_kept_crd(kube: KubeCluster, release: Release) -> None:
    helm(kube, "uninstall", release.name, "--namespace", release.namespace, "--wait")
    selector = f"app.kubernetes.io/instance={release.name}"
    eventually(
        lambda: not leftovers(kube, (*RELEASE_KINDS, "pods"), selector),
        timeout=90,
        what="release objects gone",
    )
    crd = kube.get_json("crd", CRD_NAME)
    assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == release.name
    assert kube.kubectl("get", "connectionstats", "-A").returncode == 0
