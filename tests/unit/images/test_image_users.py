"""The container images run non-root: the final stage of every Dockerfile switches to a numeric,
non-zero user before its entry point (the chart's pods are checked in
``tests/integration/chart_render/test_security_containers.py``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

DOCKERFILES = sorted(
    path for path in (REPO / "images").glob("Dockerfile.*") if path.suffix != ".dockerignore"
)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[path.name for path in DOCKERFILES])
def test_images_switch_to_a_numeric_non_root_user(dockerfile: Path) -> None:
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    stages = [index for index, line in enumerate(lines) if re.match(r"(?i)^FROM\s", line)]
    assert stages, dockerfile.name
    final_stage = lines[stages[-1] :]
    user_lines = [index for index, line in enumerate(final_stage) if re.match(r"(?i)^USER\s", line)]
    assert user_lines, f"{dockerfile.name}: the final stage has no USER (runs as root)"
    users = [final_stage[index].split(None, 1)[1] for index in user_lines]
    user, _, group = users[-1].partition(":")
    # numeric, so that the kubelet can verify runAsNonRoot without reading /etc/passwd
    assert user.isdigit(), f"{dockerfile.name}: USER {users[-1]}"
    assert int(user) != 0, f"{dockerfile.name}: USER {users[-1]}"
    assert not group or (group.isdigit() and int(group) != 0), f"{dockerfile.name}: {users[-1]}"
    entry = [i for i, line in enumerate(final_stage) if re.match(r"(?i)^(ENTRYPOINT|CMD)\s", line)]
    assert entry, f"{dockerfile.name}: no entry point"
    assert user_lines[-1] < entry[-1], f"{dockerfile.name}: USER after the entry point"
    assert len(DOCKERFILES) >= 2
