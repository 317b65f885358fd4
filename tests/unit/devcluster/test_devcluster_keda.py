"""keda.py without a cluster: the version of a build directory, the image name, the overlay over
KEDA's config/ and its rendering by the real ``kubectl kustomize`` (on a small tree shaped like
KEDA's: a Deployment per component in the ``keda`` namespace with KEDA's image names)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from wsgauge_devcluster import keda
from wsgauge_devcluster.binaries import locate


def test_version_and_image_come_from_the_build_directory(tmp_path: Path) -> None:
    directory = tmp_path / "keda-v2.21.0"
    assert keda.keda_version(directory) == "2.21.0"
    assert keda.image_ref(directory, "wsgauge") == "wsgauge/keda:2.21.0"
    assert keda.image_ref(directory, "registry.local:5000/team/") == (
        "registry.local:5000/team/keda:2.21.0"
    )
    with pytest.raises(keda.KedaError, match="not a KEDA directory"):
        keda.keda_version(tmp_path / "k8s-v1.37.2")


def test_overlay_replaces_images_and_adds_the_operator_address() -> None:
    plain = keda.overlay("wsgauge/keda:2.21.0", None)
    assert plain["resources"] == ["../config/default"]
    assert {i["name"] for i in plain["images"]} == set(keda.UPSTREAM_IMAGES)
    assert {(i["newName"], i["newTag"]) for i in plain["images"]} == {("wsgauge/keda", "2.21.0")}
    assert len(plain["patches"]) == 1
    addressed = keda.overlay("wsgauge/keda:2.21.0", "10.96.0.20:9666")
    (added,) = [p for p in addressed["patches"] if p["target"].get("name")]
    assert added["target"] == {"kind": "Deployment", "name": "keda-metrics-apiserver"}
    assert [op["value"] for op in json.loads(added["patch"])] == [
        "--metrics-service-address=10.96.0.20:9666",
        "--metrics-service-grpc-authority=keda-operator.keda.svc.cluster.local",
    ]


def _deployment(name: str, image: str, args: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "keda"},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": name, "image": image, "imagePullPolicy": "Always", "args": args}
                    ]
                },
            },
        },
    }


def test_render_runs_kustomize_over_a_tree_shaped_like_kedas(tmp_path: Path) -> None:
    kubectl = locate().bin_dir / "kubectl"
    if not kubectl.exists():
        pytest.fail("kubectl missing: run `make k8s-bins`", pytrace=False)
    directory = tmp_path / "keda-v2.21.0"
    default = directory / "config" / "default"
    default.mkdir(parents=True)
    deployments = [
        _deployment("keda-operator", "ghcr.io/kedacore/keda:latest", ["--leader-elect"]),
        _deployment(
            "keda-metrics-apiserver",
            "ghcr.io/kedacore/keda-metrics-apiserver:latest",
            ["--secure-port=6443"],
        ),
        _deployment("keda-admission", "ghcr.io/kedacore/keda-admission-webhooks:latest", []),
    ]
    (default / "deployments.yaml").write_text(yaml.safe_dump_all(deployments))
    (default / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["deployments.yaml"]}))
    documents = keda.render(kubectl, directory, "wsgauge/keda:2.21.0", "10.96.0.20:9666")
    containers = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0] for d in documents
    }
    assert {c["image"] for c in containers.values()} == {"wsgauge/keda:2.21.0"}
    assert {c["imagePullPolicy"] for c in containers.values()} == {"IfNotPresent"}
    assert containers["keda-metrics-apiserver"]["args"] == [
        "--secure-port=6443",
        "--metrics-service-address=10.96.0.20:9666",
        "--metrics-service-grpc-authority=keda-operator.keda.svc.cluster.local",
    ]
    assert containers["keda-operator"]["args"] == ["--leader-elect"]
    assert not list(directory.glob("overlay-*")), "the overlay is left behind"
    empty = tmp_path / "keda-v0.0.0"  # no config/ in it
    empty.mkdir()
    with pytest.raises(keda.KedaError, match="kustomize"):
        keda.render(kubectl, empty, "wsgauge/keda:0.0.0")
