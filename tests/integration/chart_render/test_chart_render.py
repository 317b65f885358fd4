"""The chart rendered by the real helm (no cluster): CRD source of truth, TLS, security, RBAC,
switches, webhook fail-safety, monitoring, and the injector config it hands to the code."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render_harness import CHART, REPO, Render, find, one, run_helm
from cryptography import x509
from wsgauge_operator.cli import settings_from
from wsgauge_operator.injector.plan import settings_from_mapping

CRD_NAME = "connectionstats.wsgauge.dev"


def test_chart_crd_copy_equals_the_source_of_truth() -> None:
    sources = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    copies = sorted(p.name for p in (CHART / "files" / "crds").glob("*.yaml"))
    assert sources == copies, "charts/wsgauge/files/crds/ must hold exactly the files of crds/"
    for name in sources:
        source = (REPO / "crds" / name).read_bytes()
        copy = (CHART / "files" / "crds" / name).read_bytes()
        assert source == copy, (
            f"charts/wsgauge/files/crds/{name} differs from crds/{name}: "
            f"cp crds/{name} charts/wsgauge/files/crds/"
        )


def test_rendered_crd_is_the_source_crd_kept_on_uninstall(render: Render) -> None:
    crd = one(render(), "CustomResourceDefinition", CRD_NAME)
    source = yaml.safe_load((REPO / "crds" / "connectionstats.yaml").read_text())
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for key, value in source["metadata"]["labels"].items():
        assert crd["metadata"]["labels"][key] == value
    dropped = one(render("crds.keep=false"), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in dropped["metadata"].get("annotations", {})
    assert find(render("crds.install=false"), "CustomResourceDefinition") == []


def test_helm_lint_passes(helm_binary: Path) -> None:
    for sets in ([], ["--set", "metricsApi.enabled=false,injector.enabled=false"]):
        result = run_helm(helm_binary, "lint", "--strict", str(CHART), *sets)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "unknownTopLevel=1",
        "operator.bogus=1",
        "injector.sidecar.bogus=1",
        "injector.failurePolicy=Sometimes",
        "injector.sidecar.topic=cookie",
        "tls.mode=vault",
        "metricsApi.port=0",
        "operator.replicas=2,operator.leaderElection.enabled=false",
        "operator.leaderElection.leaseDuration=soon",
        "operator.leaderElection.bogus=1",
        "monitoring.prometheusRule.extra=1",
    ],
)
def test_schema_rejects_unknown_keys_and_bad_values(helm_binary: Path, bad: str) -> None:
    result = run_helm(helm_binary, "template", "rel", str(CHART), "--set", bad)
    assert result.returncode != 0
    assert "schema" in result.stderr


def _certificate(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_generated_tls_one_ca_for_secrets_apiservices_and_webhook(render: Render) -> None:
    objects = render()
    secrets = {s["metadata"]["name"]: s for s in find(objects, "Secret")}
    assert set(secrets) == {"rel-wsgauge-metrics-api-tls", "rel-wsgauge-injector-tls"}
    cas = {s["data"]["ca.crt"] for s in secrets.values()}
    cas |= {a["spec"]["caBundle"] for a in find(objects, "APIService")}
    webhook = one(objects, "MutatingWebhookConfiguration")
    cas.add(webhook["webhooks"][0]["clientConfig"]["caBundle"])
    assert len(cas) == 1
    ca = _certificate(base64.b64decode(cas.pop()).decode())
    for name, service in (
        ("rel-wsgauge-metrics-api-tls", "rel-wsgauge-metrics-api"),
        ("rel-wsgauge-injector-tls", "rel-wsgauge-injector"),
    ):
        cert = _certificate(base64.b64decode(secrets[name]["data"]["tls.crt"]).decode())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
        assert f"{service}.wsg.svc" in names
        assert secrets[name]["type"] == "kubernetes.io/tls"


def test_apiservices_point_at_the_metrics_service_over_verified_tls(render: Render) -> None:
    objects = render()
    services = find(objects, "APIService")
    assert sorted(a["metadata"]["name"] for a in services) == [
        "v1beta1.custom.metrics.k8s.io",
        "v1beta2.custom.metrics.k8s.io",
    ]
    for apiservice in services:
        spec = apiservice["spec"]
        assert spec["group"] == "custom.metrics.k8s.io"
        assert spec["insecureSkipTLSVerify"] is False
        assert spec["service"] == {
            "name": "rel-wsgauge-metrics-api",
            "namespace": "wsg",
            "port": 8443,
        }
    priorities = {a["spec"]["version"]: a["spec"]["versionPriority"] for a in services}
    assert priorities["v1beta2"] > priorities["v1beta1"]
    service = one(objects, "Service", "rel-wsgauge-metrics-api")
    assert service["spec"]["ports"][0]["targetPort"] == "https-metrics"


def test_metrics_api_can_be_turned_off(render: Render) -> None:
    objects = render("metricsApi.enabled=false")
    assert find(objects, "APIService") == []
    assert find(objects, "Service", "rel-wsgauge-metrics-api") == []
    assert find(objects, "Secret", "rel-wsgauge-metrics-api-tls") == []
    assert [
        b for b in find(objects, "RoleBinding") if b["metadata"]["namespace"] == "kube-system"
    ] == []
    operator = one(objects, "Deployment", "rel-wsgauge-operator")
    env = {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["WSGAUGE_OPERATOR_METRICS_API"] == "false"
    assert "WSGAUGE_OPERATOR_METRICS_API_CERT_FILE" not in env


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def test_deployments_are_locked_down_with_probes_and_resources(render: Render) -> None:
    deployments = find(render(), "Deployment")
    assert sorted(d["metadata"]["name"] for d in deployments) == [
        "rel-wsgauge-injector",
        "rel-wsgauge-operator",
    ]
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in _containers(deployment):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["readinessProbe"]
            assert container["livenessProbe"]
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]
            # the TLS helpers write temporary files: /tmp must be a writable volume
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    injector = one(deployments, "Deployment", "rel-wsgauge-injector")["spec"]["template"]["spec"]
    assert injector["automountServiceAccountToken"] is False


def test_operator_gets_its_tls_by_mount_and_its_settings_by_environment(render: Render) -> None:
    operator = one(render(), "Deployment", "rel-wsgauge-operator")
    pod = operator["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rel-wsgauge-operator"
    env = {e["name"]: e.get("value") for e in _containers(operator)[0]["env"]}
    assert env["WSGAUGE_OPERATOR_LISTEN"] == "0.0.0.0:8090"
    assert env["WSGAUGE_OPERATOR_METRICS_API_LISTEN"] == "0.0.0.0:8443"
    assert env["WSGAUGE_OPERATOR_METRICS_API_CERT_FILE"].startswith("/var/run/wsgauge/")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["metrics-api-tls"]["secret"]["secretName"] == "rel-wsgauge-metrics-api-tls"
    # one replica (a never-Ready standby would keep the Deployment unavailable), electing anyway
    assert operator["spec"]["replicas"] == 1


ALLOWED_OPERATOR_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("wsgauge.dev", "connectionstats"): {"get", "list", "watch"},
    ("wsgauge.dev", "connectionstats/status"): {"get", "patch"},
    ("", "pods"): {"get", "list", "watch", "patch"},
    ("", "pods/status"): {"patch"},
    ("events.k8s.io", "events"): {"create"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "create", "update", "delete"},
    ("apps", "deployments/scale"): {"get"},
    ("apps", "statefulsets/scale"): {"get"},
    ("", "namespaces"): {"get", "list", "watch"},
}


def _operator_rules(objects: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    bound = {
        b["roleRef"]["name"]
        for b in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding")
        if any(s.get("name") == "rel-wsgauge-operator" for s in b["subjects"])
        and b["roleRef"]["kind"] == "ClusterRole"
    }
    for role in find(objects, "ClusterRole"):
        if role["metadata"]["name"] not in bound:
            continue
        for rule in role["rules"]:
            assert "*" not in rule["verbs"]
            assert "*" not in rule["resources"]
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_operator_rbac_is_least_privilege(render: Render) -> None:
    objects = render()
    granted = _operator_rules(objects)
    for key, verbs in granted.items():
        assert key in ALLOWED_OPERATOR_RULES, f"unexpected grant {key}"
        assert verbs <= ALLOWED_OPERATOR_RULES[key], f"{key}: {verbs}"
    assert ("", "secrets") not in granted
    assert ("", "namespaces") not in granted
    assert granted[("", "pods/status")] == {"patch"}
    reader = [
        b for b in find(objects, "RoleBinding") if b["metadata"]["namespace"] == "kube-system"
    ]
    assert len(reader) == 1
    assert reader[0]["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "extension-apiserver-authentication-reader",
    }


def test_watch_namespaces_binds_namespaced_rights_per_namespace(render: Render) -> None:
    objects = render("operator.watchNamespaces={team-a,team-b}")
    bindings = [
        b for b in find(objects, "RoleBinding") if b["roleRef"]["name"] == "rel-wsgauge-operator"
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert find(objects, "ClusterRoleBinding", "rel-wsgauge-operator") == []
    granted = _operator_rules(objects)
    assert granted[("", "namespaces")] == {"get", "list", "watch"}
    operator = one(objects, "Deployment", "rel-wsgauge-operator")
    env = {e["name"]: e.get("value") for e in _containers(operator)[0]["env"]}
    assert env["WSGAUGE_OPERATOR_NAMESPACES"] == "team-a,team-b"


def test_webhook_is_fail_safe_outside_opted_in_namespaces(render: Render) -> None:
    webhook = one(render(), "MutatingWebhookConfiguration")["webhooks"][0]
    assert webhook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    selector = webhook["namespaceSelector"]
    assert selector["matchLabels"] == {"wsgauge.dev/injection": "enabled"}
    assert {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-system", "wsg"],
    } in selector["matchExpressions"]
    assert webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["clientConfig"]["service"] == {
        "name": "rel-wsgauge-injector",
        "namespace": "wsg",
        "path": "/mutate",
        "port": 9443,
    }
    local = one(
        render("injector.url=https://127.0.0.1:9999/mutate"), "MutatingWebhookConfiguration"
    )
    assert local["webhooks"][0]["clientConfig"]["url"] == "https://127.0.0.1:9999/mutate"
    assert "service" not in local["webhooks"][0]["clientConfig"]
    assert find(render("injector.enabled=false"), "MutatingWebhookConfiguration") == []


def test_injector_config_map_is_understood_by_the_injector(render: Render) -> None:
    objects = render(
        "injector.sidecar.topic=phoenix",
        "injector.sidecar.maxConnections=5000",
        "injector.sidecar.drainSpread=20",
        "image.tag=1.2.3",
    )
    data = one(objects, "ConfigMap", "rel-wsgauge-injector")["data"]["injector.json"]
    settings = settings_from_mapping(json.loads(data))
    assert settings.topic == "phoenix"
    assert settings.max_connections == 5000
    assert settings.drain_spread == 20.0
    assert settings.image == "ghcr.io/wsgauge/sidecar:1.2.3"
    injector = one(objects, "Deployment", "rel-wsgauge-injector")
    assert _containers(injector)[0]["image"] == "ghcr.io/wsgauge/operator:1.2.3"


def test_cert_manager_mode(render: Render) -> None:
    objects = render("tls.mode=cert-manager")
    assert find(objects, "Secret") == []
    certificates = {c["spec"]["secretName"] for c in find(objects, "Certificate")}
    assert {"rel-wsgauge-metrics-api-tls", "rel-wsgauge-injector-tls"} <= certificates
    for apiservice in find(objects, "APIService"):
        assert "caBundle" not in apiservice["spec"]
        assert apiservice["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
            "wsg/rel-wsgauge-metrics-api"
        )
    webhook = one(objects, "MutatingWebhookConfiguration")
    assert (
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        == "wsg/rel-wsgauge-injector"
    )
    own = render(
        "tls.mode=cert-manager",
        "tls.certManager.issuerRef.name=corp",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
    )
    assert find(own, "Issuer") == []
    assert {c["spec"]["issuerRef"]["name"] for c in find(own, "Certificate")} == {"corp"}


def test_monitoring_objects(render: Render) -> None:
    objects = render(
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.podMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.grafanaDashboard.enabled=true",
    )
    assert one(objects, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "http-stats"
    assert one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] == "wsgauge-admin"
    rules = one(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "WsgaugePodsUnreachable",
        "WsgaugeCapacityExceeded",
        "WsgaugeScalingAtMax",
    }
    for rule in rules:
        assert "{{ $labels." in rule["annotations"]["summary"]
    dashboard = json.loads(
        one(objects, "ConfigMap", "rel-wsgauge-dashboard")["data"]["wsgauge.json"]
    )
    titles = [p["title"] for p in dashboard["panels"]]
    assert "Connections per topic" in titles
    assert "Connections per pod" in titles
    assert "Desired vs current replicas (HPA)" in titles
    plain = render()
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert find(plain, kind) == []


def test_operator_environment_from_the_chart_is_understood_by_the_operator_cli(
    render: Render,
) -> None:
    objects = render("operator.watchNamespaces={team-a}", "operator.statusInterval=3s")
    operator = one(objects, "Deployment", "rel-wsgauge-operator")
    environ = {e["name"]: e["value"] for e in _containers(operator)[0]["env"] if "value" in e}
    environ["WSGAUGE_OPERATOR_INSTANCE"] = "rel-wsgauge-operator-abc"  # from the downward API
    settings = settings_from([], environ)
    assert settings.kube.namespaces == ("team-a",)
    assert settings.kube.instance == "rel-wsgauge-operator-abc"
    assert settings.server.listen == "0.0.0.0:8090"
    assert settings.status.default_interval == 3.0
    assert settings.readiness.enabled is True
    assert settings.events.enabled is True
    assert settings.liveness_endpoint == "http://0.0.0.0:8091/healthz"
    probes = _containers(operator)[0]
    ports = {p["name"]: p["containerPort"] for p in probes["ports"]}
    assert probes["livenessProbe"]["httpGet"]["port"] == "http-liveness"
    assert ports["http-liveness"] == 8091
    assert ports["http-stats"] == 8090
    election = settings.leader_election
    assert election.enabled is True
    assert election.namespace == "wsg"
    assert election.lease_name == "rel-wsgauge-operator"
    assert (election.lease_duration, election.renew_deadline, election.retry_period) == (
        15.0,
        10.0,
        2.0,
    )


def test_operator_replicas_elect_a_leader_and_only_the_leader_is_ready(render: Render) -> None:
    assert (
        "affinity"
        not in one(render(), "Deployment", "rel-wsgauge-operator")["spec"]["template"]["spec"]
    )
    operator = one(render("operator.replicas=2"), "Deployment", "rel-wsgauge-operator")
    assert operator["spec"]["replicas"] == 2
    # a standby is never Ready: a RollingUpdate would wait for it forever
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    container = _containers(operator)[0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-stats"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    spread = operator["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = spread["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"

    single = render("operator.leaderElection.enabled=false")
    plain = one(single, "Deployment", "rel-wsgauge-operator")
    env = {e["name"]: e.get("value") for e in _containers(plain)[0]["env"]}
    assert env["WSGAUGE_OPERATOR_LEADER_ELECT"] == "false"
    assert "WSGAUGE_OPERATOR_LEADER_ELECTION_LEASE_NAME" not in env
    assert "affinity" not in plain["spec"]["template"]["spec"]
    assert find(single, "Role", "rel-wsgauge-operator-leader-election") == []
    assert find(single, "RoleBinding", "rel-wsgauge-operator-leader-election") == []


def test_leader_election_rights_are_one_lease_in_the_release_namespace(render: Render) -> None:
    objects = render("operator.watchNamespaces={team-a}")
    role = one(objects, "Role", "rel-wsgauge-operator-leader-election")
    assert role["metadata"]["namespace"] == "wsg"
    rules = sorted(role["rules"], key=lambda r: r["verbs"])
    assert rules == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["rel-wsgauge-operator"],
            "verbs": ["get", "update"],
        },
    ]
    binding = one(objects, "RoleBinding", "rel-wsgauge-operator-leader-election")
    assert binding["metadata"]["namespace"] == "wsg"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "rel-wsgauge-operator-leader-election",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-wsgauge-operator", "namespace": "wsg"}
    ]
    # no cluster-wide or other-namespace rights on Leases
    for role_object in find(objects, "ClusterRole") + find(objects, "Role"):
        for rule in role_object["rules"]:
            if "coordination.k8s.io" in rule["apiGroups"]:
                assert role_object is role
