"""The kind quick start of docs/install.md, run against the kind cluster of the session:
``kind load`` and ``helm install`` as written, with this checkout's cluster name, image registry
and tag put in (tests/unit/devcluster/test_devcluster_kind.py checks its cluster config and node
image)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from wsgauge_devcluster.deploy import ChartInstall
from wsgauge_devcluster.images import DEFAULT_REGISTRY, image_tag, project_version
from wsgauge_devcluster.kindcluster import KindCluster
from wsgauge_devcluster.testing import KubeCluster

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "docs" / "install.md"


def quick_start() -> str:
    """The first sh block of the ``## kind`` section."""
    text = INSTALL.read_text()
    section = text[text.index("\n## kind\n") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "no sh block in the kind section of docs/install.md"
    return match.group(1)


def commands(block: str) -> list[list[str]]:
    """The block's commands (continuation lines joined, the heredoc left out)."""
    joined = block.replace("\\\n", " ")
    heredoc = re.search(r"<<'YAML'\n.*?\nYAML\n", joined, re.S)
    if heredoc:
        joined = joined.replace(heredoc.group(0), "\n")
    return [shlex.split(line) for line in joined.splitlines() if line.strip()]


@pytest.mark.timeout(600)
def test_install_md_kind_quick_start(kube: KubeCluster, kind_cluster: KindCluster) -> None:
    registry = os.environ.get("IMAGE_REGISTRY") or DEFAULT_REGISTRY
    tag = image_tag()
    env = {**kube.env, "PATH": f"{kind_cluster.kind.parent}:{kube.env['PATH']}"}
    env.update(kind_cluster.kind_env())
    ran = []
    for argv in commands(quick_start()):
        if argv[0] in ("make", "cat") or argv[:3] == ["kind", "create", "cluster"]:
            continue  # images and node image built by make kind-e2e; the cluster is the session's
        words = [
            word.replace("wsgauge.local", registry).replace(f":{project_version()}", f":{tag}")
            for word in argv
        ]
        if words[:1] == ["kind"]:
            words[words.index("--name") + 1] = kind_cluster.settings.name
        if words[:1] == ["helm"] and tag != project_version():
            words += ["--set", f"image.tag={tag}"]  # the document's tag is the chart's default
        result = subprocess.run(
            words, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, f"{' '.join(words)}: {result.stderr}"
        ran.append(words[0])
    assert ran == ["kind", "helm", "kubectl"], ran
    install = ChartInstall(kubeconfig=kube.kubeconfig, bin_dir=kube.bin_dir, image_tag=tag)
    try:
        install.wait_available(print)
    finally:
        install.uninstall(print)
