"""The host changes a real node needs, made and undone in one place.

`prepare` gives the node its network before the kubelet starts: the CNI bridge (its address is
the node IP), a route for the Service range to that bridge (so the host reaches ClusterIPs through
kube-proxy's rules), and the sysctls pod networking needs. Before changing a sysctl it records the
original value in ``<state>/node/host-changes.json``; the kubelet changes a few more of its own
(``vm.overcommit_memory``, ``kernel.panic``, ``kernel.panic_on_oops``), recorded the same way
before it starts.

`undo` takes back everything a node run leaves on the host, whether it was stopped cleanly or
killed: processes in the ``kubepods`` cgroups and the container shims of our containerd, mounts
under the node's directories, the pods' network namespaces, the bridge and its veths, the route,
the iptables chains of kube-proxy, the kubelet and the CNI plugins (``KUBE-*``, ``CNI-*``), the
``kubepods`` cgroups, the symlinks in ``/var/log/containers``, and the recorded sysctls. It is
idempotent and tolerant: what is already gone is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from wsgauge_devcluster.exceptions import StartupError
from wsgauge_devcluster.settings import NodeSettings

NETWORK_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
}
"""What pod networking needs: forwarding between pods and Services, bridged traffic seen by
kube-proxy's rules (a pod reaching a Service backed by a pod on the same bridge)."""

KUBELET_SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
"""Set by the kubelet itself at start (protectKernelDefaults off); recorded to be restored."""

CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where the cgroup v1 controllers are mounted."""

OWN_CHAIN = re.compile(r"^(KUBE-|CNI-)")
"""iptables chains made by kube-proxy, the kubelet and the CNI plugins."""

Log = Callable[[str], None]


def _run(*argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise StartupError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    """The current value, None when the kernel has no such setting."""
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    """Set a sysctl; a missing one is skipped."""
    with contextlib.suppress(FileNotFoundError):
        _sysctl_path(name).write_text(value)


@dataclass(frozen=True)
class HostChanges:
    """The journal of host changes of one node (``<state>/node/host-changes.json``)."""

    path: Path
    """The journal file."""

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data: dict[str, dict[str, str]] = json.loads(self.path.read_text())
            return data
        except (OSError, ValueError):
            return {"sysctls": {}}

    def record_sysctls(self, names: Iterable[str]) -> None:
        """Remember the original values of names not recorded yet (an original stays)."""
        data = self._load()
        recorded = data.setdefault("sysctls", {})
        for name in names:
            value = read_sysctl(name)
            if name not in recorded and value is not None:
                recorded[name] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")

    def restore_sysctls(self) -> dict[str, str]:
        """Put every recorded sysctl back; returns what was restored; forgets the journal."""
        recorded = self._load().get("sysctls", {})
        for name, value in recorded.items():
            write_sysctl(name, value)
        self.path.unlink(missing_ok=True)
        return recorded


def require_root() -> None:
    """A real node changes host networking and cgroups: it needs root."""
    if os.geteuid() != 0:
        raise StartupError(
            "a real node (WSGAUGE_NODE_KIND=kubelet) needs root: it creates a bridge, iptables "
            "rules and cgroups. Run as root, or use WSGAUGE_NODE_KIND=pod-runner."
        )


def prepare(node: NodeSettings, service_cidr: str, changes: HostChanges) -> None:
    """Bridge with the node IP, Service route, networking sysctls (idempotent)."""
    changes.record_sysctls([*NETWORK_SYSCTLS, *KUBELET_SYSCTLS])
    for name, value in NETWORK_SYSCTLS.items():
        write_sysctl(name, value)
    if _run("ip", "link", "show", node.bridge).returncode != 0:
        _run("ip", "link", "add", node.bridge, "type", "bridge", check=True)
    address = f"{node.node_ip}/{node.prefix_length}"
    if address not in _run("ip", "-o", "-4", "addr", "show", "dev", node.bridge).stdout:
        _run("ip", "addr", "add", address, "dev", node.bridge, check=True)
    _run("ip", "link", "set", node.bridge, "up", check=True)
    _run(
        "ip", "route", "replace", service_cidr, "dev", node.bridge, "src", node.node_ip,
        check=True,
    )  # fmt: skip


def processes_in_cgroup(name: str) -> set[int]:
    """Pids in every ``<controller>/<name>`` cgroup tree."""
    pids: set[int] = set()
    for controller in ("pids", "memory", "cpu", "freezer"):
        top = CGROUP_ROOT / controller / name
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _processes_with(fragment: str) -> set[int]:
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if fragment in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.add(int(entry.name))
    return found


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def kill_containers(containerd_socket: Path, log: Log) -> None:
    """SIGKILL what runs in pods (the kubepods cgroups) and our containerd's shims."""
    for attempt in range(20):
        pids = processes_in_cgroup("kubepods") | _processes_with(f"-address {containerd_socket}")
        pids.discard(os.getpid())
        if not pids:
            return
        if attempt == 0:
            log(f"killing {len(pids)} container processes and shims left by the node")
        _kill(pids)
        time.sleep(0.25)


def unmount_under(directories: Iterable[Path]) -> int:
    """Lazily unmount every mount below the directories (deepest first); how many."""
    roots = [str(d.resolve()) for d in directories]
    mounts: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == r or point.startswith(r + "/") for r in roots):
                mounts.append(point)
    for point in sorted(set(mounts), key=len, reverse=True):
        _run("umount", "-l", point)
    return len(set(mounts))


def remove_pod_netns(bridge: str) -> int:
    """Delete the bridge's veths, then the CNI network namespaces left with no interface."""
    links = _run("ip", "-o", "link", "show", "master", bridge).stdout.splitlines()
    for line in links:
        name = line.split(":")[1].strip().split("@")[0]
        _run("ip", "link", "delete", name)
    removed = 0
    netns_dir = Path("/run/netns")
    for ns in sorted(netns_dir.glob("cni-*")) if netns_dir.is_dir() else []:
        inside = _run("ip", "-n", ns.name, "-o", "link", "show").stdout
        names = {line.split(":")[1].strip().split("@")[0] for line in inside.splitlines()}
        if names <= {"lo"}:
            _run("ip", "netns", "delete", ns.name)
            removed += 1
    return removed


def _iptables_cleanup(tool: str) -> int:
    """Drop the KUBE-*/CNI-* chains and every rule that jumps to them; how many chains."""
    dropped = 0
    for table in ("filter", "nat", "mangle", "raw"):
        rules = _run(tool, "-t", table, "-S").stdout.splitlines()
        own = {line.split()[1] for line in rules if line.startswith("-N ")}
        own = {chain for chain in own if OWN_CHAIN.match(chain)}
        for line in rules:
            words = shlex.split(line)  # comments are quoted
            if len(words) > 2 and words[0] == "-A" and words[1] not in own:
                target = words[words.index("-j") + 1] if "-j" in words else ""
                if OWN_CHAIN.match(target):
                    _run(tool, "-t", table, "-D", *words[1:])
        for chain in own:
            _run(tool, "-t", table, "-F", chain)
        for chain in own:
            if _run(tool, "-t", table, "-X", chain).returncode == 0:
                dropped += 1
    return dropped


def _remove_cgroups(name: str) -> None:
    for controller in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
        top = controller / name
        if not top.is_dir():
            continue
        # bottom-up; os.walk skips directories that vanish meanwhile (the kubelet of the
        # checkout whose node starts next may be creating and removing pod cgroups already)
        for parent, directories, _ in os.walk(top, topdown=False):
            for directory in directories:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(parent, directory))
        with contextlib.suppress(OSError):
            top.rmdir()


def undo(
    node: NodeSettings,
    *,
    service_cidr: str,
    node_dir: Path,
    containerd_socket: Path,
    changes: HostChanges,
    log: Log,
) -> None:
    """Take back every host change a node run made (see the module docstring)."""
    kill_containers(containerd_socket, log)
    unmounted = unmount_under([node_dir, containerd_socket.parent])
    netns = remove_pod_netns(node.bridge)
    if _run("ip", "link", "show", node.bridge).returncode == 0:
        _run("ip", "link", "delete", node.bridge)
        log(f"removed bridge {node.bridge}")
    _run("ip", "route", "delete", service_cidr, "dev", node.bridge)
    chains = sum(_iptables_cleanup(tool) for tool in ("iptables", "ip6tables"))
    _remove_cgroups("kubepods")
    logs = Path("/var/log/containers")
    for link in logs.glob("*.log") if logs.is_dir() else []:
        with contextlib.suppress(OSError):
            if link.is_symlink() and str(node_dir) in os.readlink(link):
                link.unlink()
    restored = changes.restore_sysctls()
    log(
        f"host cleaned: {unmounted} mounts, {netns} network namespaces, {chains} iptables "
        f"chains, sysctls restored: {', '.join(f'{k}={v}' for k, v in restored.items()) or '-'}"
    )
