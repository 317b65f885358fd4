"""Leader election between operator replicas: the I/O loop around :mod:`.leader_lease`.

A :class:`LeaderElector` reads and writes one ``coordination.k8s.io/v1`` Lease (the only API
calls the operator makes outside :mod:`.kubeapi`, through the same asyncio client,
``kubernetes.aio``, and credentials):

- :meth:`LeaderElector.acquire` looks at the Lease every ``retry_period`` (jittered, see
  :mod:`wsgauge_operator.model.backoff`: standbys started together do not look in lockstep) until
  this replica holds it (or until asked to stop while still a standby);
- :meth:`LeaderElector.hold` renews it every ``retry_period`` and calls ``on_lost`` as soon as
  the Lease is held by someone else or could not be renewed for ``renew_deadline``; the caller
  then stops the process at once rather than risk two writers;
- :class:`RenewalThread` runs :meth:`LeaderElector.hold` in a thread with its own event loop
  (and its own connection to the API server), so that a busy operator (kopf starting,
  thousands of pods) never delays a renewal;
- :meth:`LeaderElector.release` clears the holder on a graceful stop, so that a standby takes
  over within its next look instead of waiting for the Lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes.aio import client as kube_client

from wsgauge_operator.kube.kubeapi import json_call, load_client_configuration
from wsgauge_operator.kube.leader_lease import (
    Action,
    Candidacy,
    Decision,
    LeaseRecord,
    lease_object,
    lease_spec,
    record_from_lease,
    release_spec,
)
from wsgauge_operator.model.backoff import jittered
from wsgauge_operator.model.exceptions import KubeApiError
from wsgauge_operator.model.settings import KubeSettings, LeaderElectionSettings

logger = logging.getLogger(__name__)

LEASE_GROUP, LEASE_VERSION, LEASE_PLURAL = "coordination.k8s.io", "v1", "leases"
"""Where Leases live (read and written as plain JSON objects)."""

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""The pod's own namespace, as mounted with its service account token."""


def lease_namespace(settings: LeaderElectionSettings, account_file: Path | None = None) -> str:
    """The Lease's namespace: the setting, else the pod's own namespace, else ``default``."""
    if settings.namespace:
        return settings.namespace
    path = SERVICE_ACCOUNT_NAMESPACE if account_file is None else account_file
    try:
        own = path.read_text().strip()
    except OSError:
        own = ""
    return own or "default"


def holder_identity(settings: LeaderElectionSettings, instance: str) -> str:
    """The identity this process writes into the Lease: unique per process, even on restart."""
    if settings.identity:
        return settings.identity
    base = instance or os.environ.get("POD_NAME") or socket.gethostname() or "wsgauge-operator"
    return f"{base}_{secrets.token_hex(4)}"


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _lease_body(answer: Any, what: str) -> dict[str, Any]:
    """The Lease object of an answer; anything else is an API error (never trusted as a write)."""
    if not isinstance(answer, dict):
        raise KubeApiError(f"lease {what}: unexpected answer {type(answer).__name__}", 0)
    return answer


class LeaseApi:
    """Read, create and replace one Lease.

    One client per event loop (an aiohttp session belongs to the loop it runs on): the
    operator's loop looks at the Lease as a standby, the renewal thread's loop renews it.
    """

    def __init__(self, kube: KubeSettings, namespace: str, name: str) -> None:
        self.namespace = namespace
        self.name = name
        self._kube = kube
        self._timeout = kube.request_timeout
        self._field_manager = kube.field_manager
        self._configuration: kube_client.Configuration | None = None
        self._clients: dict[asyncio.AbstractEventLoop, kube_client.ApiClient] = {}
        self._lock = threading.Lock()

    async def open(self) -> None:
        """Load the credentials (ConfigError when they cannot be loaded)."""
        if self._configuration is None:
            self._configuration = await load_client_configuration(self._kube)

    async def _custom(self) -> Any:
        """The CustomObjectsApi on this loop's client."""
        await self.open()
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                client = self._clients[loop] = kube_client.ApiClient(self._configuration)
        return kube_client.CustomObjectsApi(client)

    async def close(self) -> None:
        """Release the connections of the running loop's client."""
        with self._lock:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]

    async def _call(self, what: str, request: Callable[[Any], Any]) -> Any:
        """One request on this loop's client; its JSON answer, decoded here.

        The raw body is read (``*_without_preload_content``) rather than left to the generated
        client, whose response-type maps drop some successful answers (a replace that re-creates
        a deleted Lease answers 201).
        """
        custom = await self._custom()
        return await json_call(what, lambda: request(custom))

    async def read(self) -> dict[str, Any] | None:
        """The Lease, or None when it does not exist."""
        try:
            lease = await self._call(
                f"get lease {self.namespace}/{self.name}",
                lambda custom: custom.get_namespaced_custom_object_without_preload_content(
                    LEASE_GROUP,
                    LEASE_VERSION,
                    self.namespace,
                    LEASE_PLURAL,
                    self.name,
                    _request_timeout=self._timeout,
                ),
            )
        except KubeApiError as error:
            if error.not_found:
                return None
            raise
        return _lease_body(lease, "get")

    async def create(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Create the Lease (409 when someone else created it first)."""
        body = lease_object(self.namespace, self.name, spec)
        lease = await self._call(
            f"create lease {self.namespace}/{self.name}",
            lambda custom: custom.create_namespaced_custom_object_without_preload_content(
                LEASE_GROUP,
                LEASE_VERSION,
                self.namespace,
                LEASE_PLURAL,
                body,
                field_manager=self._field_manager,
                _request_timeout=self._timeout,
            ),
        )
        return _lease_body(lease, "write")

    async def replace(self, spec: Mapping[str, Any], resource_version: str) -> dict[str, Any]:
        """Replace the Lease if it is still at ``resource_version`` (409 otherwise)."""
        body = lease_object(self.namespace, self.name, spec, resource_version)
        lease = await self._call(
            f"update lease {self.namespace}/{self.name}",
            lambda custom: custom.replace_namespaced_custom_object_without_preload_content(
                LEASE_GROUP,
                LEASE_VERSION,
                self.namespace,
                LEASE_PLURAL,
                self.name,
                body,
                field_manager=self._field_manager,
                _request_timeout=self._timeout,
            ),
        )
        return _lease_body(lease, "write")


class LeaderElector:
    """Wins, keeps and gives up the Lease for one operator process."""

    def __init__(
        self,
        settings: LeaderElectionSettings,
        identity: str,
        api: LeaseApi,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.candidacy = Candidacy(identity, settings)
        self._api = api
        self._clock = clock
        self._last_waiting_for: str | None = None

    async def close(self) -> None:
        """Release the connections of the running loop's API client."""
        await self._api.close()

    @property
    def leading(self) -> bool:
        """True while this replica holds a Lease renewed within ``renew_deadline``."""
        return self.candidacy.is_leader(self._clock())

    async def _read(self) -> LeaseRecord | None:
        lease = await self._api.read()
        return None if lease is None else record_from_lease(lease)

    async def _attempt(self, record: LeaseRecord | None, renew_only: bool = False) -> Decision:
        """One look at ``record`` and one write when the decision calls for it.

        With ``renew_only`` (the leader), nothing but a renewal is written: a Lease that is gone
        or held by someone else means leadership is lost, and taking it again could overlap
        with another leader.
        """
        decision = self.candidacy.look(record, self._clock())
        if decision.action is Action.WAIT or (renew_only and decision.action is not Action.RENEW):
            return decision
        spec = lease_spec(decision.action, record, self.identity, _utc_now(), self.settings)
        sent_at = self._clock()
        if decision.action is Action.CREATE or record is None:
            written = await self._api.create(spec)
        else:
            written = await self._api.replace(spec, record.resource_version)
        self.candidacy.won(record_from_lease(written), sent_at)
        return decision

    def _log_waiting(self, holder: str) -> None:
        if holder != self._last_waiting_for:
            self._last_waiting_for = holder
            logger.info(
                "standby: waiting for lease %s/%s, held by %s",
                self._api.namespace,
                self._api.name,
                holder,
            )

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica leads (True) or ``stop`` is set first (False)."""
        logger.info(
            "leader election: candidate %s for lease %s/%s",
            self.identity,
            self._api.namespace,
            self._api.name,
        )
        while not stop.is_set():
            retry_in = self.settings.retry_period
            try:
                decision = await self._attempt(await self._read())
            except KubeApiError as error:
                level = logging.INFO if error.status == 409 else logging.WARNING
                logger.log(level, "leader election: %s", error)
            else:
                if decision.action is Action.WAIT:
                    self._log_waiting(decision.holder)
                    retry_in = decision.retry_in
                elif self.leading:
                    logger.info(
                        "leader election: %s acquired lease %s/%s (%s)",
                        self.identity,
                        self._api.namespace,
                        self._api.name,
                        decision.action.value,
                    )
                    return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.05, jittered(retry_in)))
        return False

    async def hold(self, on_lost: Callable[[str], None]) -> None:
        """Renew every ``retry_period`` until cancelled; on loss call ``on_lost(reason)`` once.

        Renewals start from the Lease as last written (one request each); after a failure the
        Lease is read again first. Every attempt is bounded by the time left before
        ``renew_deadline``.
        """
        record = self.candidacy.record
        while True:
            deadline = self.candidacy.leader_until()
            now = self._clock()
            if deadline is None or now >= deadline:
                on_lost(f"lease not renewed for {self.settings.renew_deadline:g}s")
                return
            await asyncio.sleep(min(self.settings.retry_period, deadline - now))
            remaining = deadline - self._clock()
            if remaining <= 0:
                continue
            try:
                decision = await asyncio.wait_for(self._renew(record), timeout=remaining)
            except (TimeoutError, KubeApiError) as error:
                logger.warning("leader election: renewal failed: %s", error or "timed out")
                record = None
                continue
            if decision.action is not Action.RENEW:
                holder = decision.holder or "nobody (released or deleted)"
                on_lost(f"lease {self._api.namespace}/{self._api.name} is held by {holder}")
                return
            record = self.candidacy.record

    async def _renew(self, record: LeaseRecord | None) -> Decision:
        if record is None:
            record = await self._read()
        return await self._attempt(record, renew_only=True)

    async def release(self) -> None:
        """Give the Lease up if we still hold it (clear the holder); errors are only logged.

        A renewal cut short by the stop may still have reached the API server (a newer
        resourceVersion than the one we know): on 409 the Lease is read again, and released if
        it still names us.
        """
        record = self.candidacy.record
        if not self.leading or record is None or record.holder != self.identity:
            return
        self.candidacy.released(record, self._clock())
        for _ in range(3):
            try:
                await self._api.replace(release_spec(record, _utc_now()), record.resource_version)
            except KubeApiError as error:
                if error.status == 409:
                    try:
                        fresh = await self._read()
                    except KubeApiError as read_error:
                        error = read_error
                    else:
                        if fresh is None or fresh.holder != self.identity:
                            return  # gone, or someone else's already
                        record = fresh
                        continue
                logger.warning("leader election: could not release the lease: %s", error)
                return
            logger.info(
                "leader election: released lease %s/%s", self._api.namespace, self._api.name
            )
            return


class RenewalThread:
    """:meth:`LeaderElector.hold` in its own thread and event loop.

    The operator's event loop can be busy for seconds (kopf's start-up, a large fleet); a
    renewal waiting behind that work would make a healthy leader give up. ``on_lost`` is called
    in this thread.
    """

    def __init__(self, elector: LeaderElector, on_lost: Callable[[str], None]) -> None:
        self._elector = elector
        self._on_lost = on_lost
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="leader-lease-renewal", daemon=True)

    def start(self) -> None:
        """Start renewing."""
        self._thread.start()
        self._started.wait()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            self._loop = loop
            self._task = loop.create_task(self._hold())
            self._started.set()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
        except Exception as error:  # top-level boundary of the thread: a leader must never
            # keep acting with a dead renewal loop
            logger.exception("leader election: renewal loop failed")
            self._on_lost(f"renewal loop failed: {error!r}")
        finally:
            self._started.set()
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _hold(self) -> None:
        try:
            await self._elector.hold(self._on_lost)
        finally:
            await self._elector.close()  # this loop's client

    def stop(self, timeout: float = 15.0) -> None:
        """Stop renewing and wait for the thread (blocking: call it from a worker thread)."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout)
