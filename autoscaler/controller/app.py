"""The in-cluster controller: `Loop.tick` on a clock, behind a Lease, with policy hot reload.

Wiring (every box is a collaborator the controller is given; `factory.from_settings` is the
one place the real ones are built, tests pass the fakes of `autoscaler.testing`):

    policy: --policy FILE (polled for changes)  |  ConfigMaps labelled pd-autoscaler.io/policy
                   \\ validated per document, last good kept; applied on the next tick
                     (policy_source.py)
    leader election (coordination.k8s.io Lease, leader.py) -> only the leader ticks and writes;
          with buckets > 1, one Lease per bucket (shards.py) -> each replica ticks and writes
          the pools of the buckets it holds
    on leading (and when a reload adds forecast or slo roles): their history refilled from
          the source's range queries before the next tick (bounded, never fatal; backfill.py)
    tick: Loop(policy, MetricsSource, fenced actuator) -> TickReport
          -> Events on scaled Deployments; state + last decision saved to the state shards
             (state_store.py); DecisionStore (in-process servers) and Telemetry (/metrics)
    aiohttp: /healthz /readyz /metrics (+ server plug-ins, e.g. KEDA metrics-api) on every replica
    adoption servers when configured (servers.py: external.metrics.k8s.io over TLS, KEDA gRPC
    scaler) on every replica, each restarted if its port stops answering; standbys answer
    "no data", and the leader points the overlays' one EndpointSlice at its Pod IP so their
    selector-less Services reach it alone (endpoint.py)

The Role allows `deployments/scale` (replicas only) on named Deployments, and `update`/`patch`
on the named state-shard ConfigMaps and the named Lease(s) of its own (state_store.py,
leader.py and shards.py say why); the adoption overlays add one named EndpointSlice
(endpoint.py), and nothing on Pods.

Restart safety: the state is saved after every tick whose state changed, on wall time, and
restored onto the monotonic clock, so a new leader keeps the stabilization windows and rate-limit
history of the old one (it does not scale down a pool that was scaled up a minute ago).

Only the leader writes: the tick loop runs as the elector's leading task (cancelled when the
lease is lost), and every scale passes a fence that re-checks the lease was renewed within the
renew deadline. Standbys watch the policy (so they are ready to take over) and serve probes.
Every wait goes through `backoff.sleep`, every retry through `backoff.Delays`; every long-lived
task runs under `backoff.supervise` or a loop of the same contract (any exception: logged,
retried, reported in /readyz while it lasts). A leader that cannot tick hands the Lease over
(`_tick_forever`, `_hand_over`); an unreadable state is replaced, never a reason to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from autoscaler import errors
from autoscaler import telemetry as telemetry_mod
from autoscaler.actuator.base import ClusterActuator, EventSink, ObjectRef
from autoscaler.actuator.fenced import FencedActuator
from autoscaler.actuator.kubernetes import api_error_code
from autoscaler.controller import backoff
from autoscaler.controller.endpoint import LeaderEndpoint
from autoscaler.controller.leader import Lease, LeaseLike
from autoscaler.controller.policy_source import PolicySource
from autoscaler.controller.servers import AdoptionServers
from autoscaler.controller.settings import Settings
from autoscaler.controller.shards import BucketLeases, bucket_of
from autoscaler.controller.state_store import (
    StateStoreLike,
    StateUnreadable,
    rfc3339,
)
from autoscaler.decision.state import ScaleState
from autoscaler.loop import Loop, TickReport
from autoscaler.metrics.source import MetricsSource
from autoscaler.server import app as app_mod
from autoscaler.server.store import DecisionStore
from autoscaler.spec import DeploymentRef, PolicyFile

if TYPE_CHECKING:
    from autoscaler.controller.cluster_cache import DeploymentCache

    # Imported at run time only when configured (controller/servers.py).
    from autoscaler.server import external_metrics as em
    from autoscaler.server import keda

log = structlog.get_logger(__name__)

FETCH_SHARE_OF_TICK = 0.8
"""Share of the tick period the metrics fetch may take before it counts as missing data."""


class Controller:
    """One controller replica. `run()` until cancelled; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        api: ApiClient,
        source: MetricsSource,
        actuator: ClusterActuator,
        events: EventSink,
        state_store: StateStoreLike,
        leader_endpoint: LeaderEndpoint | None = None,
        lease: LeaseLike | None = None,
        telemetry: telemetry_mod.Telemetry | None = None,
        store: DecisionStore | None = None,
        plugins: Sequence[app_mod.Plugin] = (),
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        serve_http: bool = True,
        release_on_exit: bool = True,
        step_down_after_s: float | None = None,
        cluster_cache: DeploymentCache | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.telemetry = telemetry or telemetry_mod.DEFAULT
        self.source = source
        self.store = store or DecisionStore()
        self.health = app_mod.Health(stall_after_s=max(60.0, 4 * settings.tick_s))
        self.events = events
        self.actuator = actuator
        # Followed on every replica (a standby that takes over reads a synced cache at once).
        self.cluster_cache = cluster_cache
        self.state_store = state_store
        self.leader_endpoint = leader_endpoint
        # One bucket: the single leader of leader.Lease. More: this replica's share of the
        # buckets (shards.py); `bucket_leases` is that same object, for the per-bucket fence.
        self.bucket_leases: BucketLeases | None = None
        if settings.buckets > 1:
            if lease is not None and not isinstance(lease, BucketLeases):
                msg = f"buckets={settings.buckets} needs BucketLeases, not {type(lease)}"
                raise TypeError(msg)
            lease = lease or BucketLeases(
                client.CoordinationV1Api(api), namespace=settings.namespace,
                lease_name=settings.lease_name, identity=settings.identity,
                buckets=settings.buckets, lease_duration_s=settings.lease_duration_s,
                renew_deadline_s=settings.renew_deadline_s,
                retry_period_s=settings.retry_period_s, timeout_s=settings.api_timeout_s,
                wall=wall)
            self.bucket_leases = lease
        self.lease: LeaseLike = lease or Lease(settings, api, wall=wall)
        # (namespace, name) of each Deployment of this replica's share -> its bucket.
        self._ref_bucket: dict[tuple[str, str], int] = {}
        self.policy_source = PolicySource(settings, api=api, health=self.health,
                                          telemetry=self.telemetry, events=events,
                                          is_leader=self.is_leader)
        # The adoption servers (docs/adoption.md), started by run() when configured.
        self.servers = AdoptionServers(settings, store=self.store, api=api,
                                       probe_s=settings.serve_probe_s)
        self.loop: Loop | None = None
        self.ticks = 0
        self._plugins: tuple[app_mod.Plugin, ...] = tuple(plugins)
        if settings.keda_metrics_api:
            self._plugins += (self.servers.keda_metrics_api,)
        self._clock = clock
        self._wall = wall
        self._serve_http = serve_http
        # False only in tests that simulate a crash (a killed Pod releases nothing).
        self._release_on_exit = release_on_exit
        self._lead_task: asyncio.Task[None] | None = None
        self._runner: Any = None
        self.http_port: int | None = None
        self._saved_state: str | None = None
        # A leader that has not completed a tick for this long hands the Lease over (a standby
        # may be able to); half the liveness probe's stall time, so it happens before a restart.
        self.step_down_after_s = (step_down_after_s if step_down_after_s is not None
                                  else self.health.stall_after_s / 2)
        self._step_down = asyncio.Event()
        self.step_downs = 0

    @property
    def policy(self) -> PolicyFile | None:
        return self.policy_source.current

    @property
    def external_metrics(self) -> em.ExternalMetricsServer | None:
        return self.servers.external_metrics

    @property
    def keda_scaler(self) -> keda.KedaScalerServer | None:
        return self.servers.keda_scaler

    # -- top level ---------------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        log.info("controller_start", identity=s.identity, namespace=s.namespace,
                 dry_run=s.dry_run, tick_s=s.tick_s, leader_election=s.leader_election,
                 policy=str(s.policy_file) if s.policy_file else f"configmaps {s.policy_selector}")
        if self._serve_http:
            app = app_mod.create_app(health=self.health, store=self.store,
                                     telemetry=self.telemetry, plugins=self._plugins)
            self._runner = await app_mod.start(app, host=s.http_host, port=s.http_port)
            self.http_port = app_mod.bound_port(self._runner)
        policy_task = asyncio.create_task(self.policy_source.watch(), name="policy")
        if self.cluster_cache is not None:
            self.cluster_cache.report = self.health.report
            cache_task = asyncio.create_task(self.cluster_cache.run(self._targets),
                                             name="cluster-cache")
        try:
            # Every replica serves (standbys answer "no data"), so a new leader is reachable as
            # soon as the EndpointSlice holds its address; only that moves on failover.
            await self.servers.start(report=self.health.report)
            if self.leader_endpoint is not None:
                self.leader_endpoint.start(report=self.health.report)
            if s.leader_election:
                await self._elect_forever()
            else:
                await self._lead()
        finally:
            policy_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await policy_task
            if self.cluster_cache is not None:
                cache_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cache_task
            if self._lead_task is not None and self._lead_task is not asyncio.current_task():
                await self._stop_leading_task()
            if self.leader_endpoint is not None:
                # Before the lease goes: the leader Services must stop routing here first. A
                # simulated crash removes nothing (the next leader overwrites the address).
                await self.leader_endpoint.stop(relinquish=self._release_on_exit)
            if self._release_on_exit:
                await self._release_lease()
            await self.servers.stop()
            if self._runner is not None:
                await self._runner.cleanup()
            log.info("controller_stop", identity=s.identity)

    def _targets(self) -> list[DeploymentRef]:
        """The Deployments the current policy scales (what the watch cache follows)."""
        p = self.policy
        return [] if p is None else [r.deployment for pool in p.pools
                                     for r in pool.roles.values()]

    # -- leader election ---------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True while the lease (with buckets: any bucket) is ours and was renewed within the
        renew deadline."""
        return self.lease.held()

    def may_write(self, ref: DeploymentRef) -> bool:
        """The fence of every scale write: the lease, or with buckets the lease of the bucket
        of the pool that scales `ref` (a Deployment of no pool of ours: never)."""
        if self.bucket_leases is None:
            return self.is_leader()
        bucket = self._ref_bucket.get((ref.namespace, ref.name))
        return bucket is not None and self.bucket_leases.holds(bucket)

    def owns_shard(self, index: int) -> bool:
        """Whether state shard `index` is the leading task's to restore and save: with buckets,
        shard `index` belongs to bucket `index % buckets` (shards.py)."""
        if self.bucket_leases is None:
            return True
        return index % self.settings.buckets in self.bucket_leases.owned

    def may_write_shard(self, index: int) -> bool:
        """The fence of every state-shard write: its bucket's lease (or the lease) held now."""
        if self.bucket_leases is None:
            return self.is_leader()
        return self.owns_shard(index) and self.bucket_leases.holds(index % self.settings.buckets)

    def _share(self, policy: PolicyFile | None) -> PolicyFile | None:
        """This replica's part of `policy`: all of it with one bucket, else the pools of the
        buckets the leading task was started for; None when that is no pool at all, or when
        the policy cannot be split (a file-wide gpu_budget needs every pool in one decision)."""
        if policy is None or self.bucket_leases is None:
            return policy
        buckets, owned = self.settings.buckets, self.bucket_leases.owned
        if policy.gpu_budget is not None:
            self.health.report("tick", f"policy gpu_budget {policy.gpu_budget} spans every "
                               f"pool and cannot be enforced with buckets={buckets}: not "
                               "ticking (set buckets=1, or drop the file-wide budget)")
            return None
        if self.health.failing.get("tick", "").startswith("policy gpu_budget"):
            self.health.report("tick", None)  # a policy without one came
        pools = tuple(p for p in policy.pools if bucket_of(p.name, buckets) in owned)
        self._ref_bucket = {(r.deployment.namespace, r.deployment.name): bucket_of(p.name, buckets)
                            for p in pools for r in p.roles.values()}
        if not pools:
            return None
        return policy.model_copy(update={"pools": pools})

    async def _idle_until_policy_changes(self, version: int, why: str) -> None:
        """Hold a leading task with nothing to tick (its buckets hold no pool): alive for the
        liveness probe, back as soon as the policy changes."""
        log.info("leading_idle", why=why, buckets=sorted(self.bucket_leases.owned)
                 if self.bucket_leases else None)
        while self.policy_source.version == version:
            self.health.last_tick = self._clock()
            await backoff.sleep(min(self.settings.tick_s, self.settings.policy_poll_s))

    async def _elect_forever(self) -> None:
        delays = backoff.Delays(initial_s=self.settings.retry_period_s,
                                max_s=max(30.0, self.settings.retry_period_s))
        failures = 0
        while True:
            self._step_down.clear()
            round_ = asyncio.create_task(
                self.lease.contend(on_started=self._lead, on_stopped=self._stopped_leading),
                name="leader-election")
            stepping_down = asyncio.create_task(self._step_down.wait(), name="step-down")
            try:
                await asyncio.wait({round_, stepping_down}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (round_, stepping_down):
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
            if stepping_down.done() and not stepping_down.cancelled():
                await self._hand_over()
                continue
            error = None if round_.cancelled() else round_.exception()
            # The elector returned (lease lost) or failed; make sure the leading task is gone
            # before contending again (the library does not cancel it when it raises).
            await self._stop_leading_task()
            if error is None:
                failures = 0
                delays.reset()
                self.health.report("leader-election", None)
                await backoff.sleep(self.settings.retry_period_s)
                continue
            failures += 1
            delay = delays.next()
            self._api_failed("lease", error)
            log.warning("leader_election_error", error=repr(error), failures=failures,
                        retry_in_s=delay)
            if failures >= 3:
                self.health.report("leader-election",
                                   f"{error!r} ({failures} rounds in a row)")
            await backoff.sleep(delay)

    async def _hand_over(self) -> None:
        """Give the Lease up because this leader cannot tick (see `_tick_forever`), then stay
        out of the contest for one lease duration, so a standby that can tick takes over; with
        no standby, this replica leads again after that and retries."""
        reason = self.health.failing.get("tick", "")
        await self._stop_leading_task()
        await self.lease.release()
        self.step_downs += 1
        log.error("leadership_handed_over", identity=self.settings.identity, reason=reason,
                  contend_again_in_s=self.settings.lease_duration_s)
        await backoff.sleep(self.settings.lease_duration_s)

    async def _stop_leading_task(self) -> None:
        task = self._lead_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_leader(leader=False)

    async def _stopped_leading(self) -> None:
        log.warning("leadership_lost", identity=self.settings.identity)
        await self._stop_leading_task()

    def _set_leader(self, *, leader: bool) -> None:
        self.health.leader = leader
        self.store.leader = leader
        self.telemetry.set_leader(leader=leader)
        if self.leader_endpoint is not None:
            self.leader_endpoint.set(leader=leader)
        if leader:
            self.health.leading_since = self._clock()
            self.health.last_tick = None
        else:
            self.loop = None
            # Ticks are the leader's job: a standby is not failing at them.
            self.health.report("tick", None)
            # A standby serves nothing: its last numbers as leader would go stale unnoticed
            # behind a Service that still (or again) routes to it.
            self.store.clear()

    def _api_failed(self, operation: str, exc: BaseException) -> None:
        """Count a failed Kubernetes API call (not a fence that closed, not a document that is
        not a state: those are ours)."""
        if isinstance(exc, ApiException | OSError | TimeoutError | aiohttp.ClientError):
            self.telemetry.kubernetes_api_error(operation=operation, code=api_error_code(exc))

    async def _release_lease(self) -> None:
        if not self.settings.leader_election or not self.is_leader():
            return
        await self.lease.release()
        self._set_leader(leader=False)

    # -- leading: the tick loop --------------------------------------------------------------

    async def _lead(self) -> None:
        self._lead_task = asyncio.current_task()
        self._set_leader(leader=True)
        log.info("leadership_acquired", identity=self.settings.identity)
        try:
            await self._tick_forever()
        finally:
            self._set_leader(leader=False)

    async def _restore_state(self) -> ScaleState:
        """The saved state; or, when it cannot be read, a fresh one: never a reason to stop
        leading.

        A transient failure (a dropped connection, an API error) is retried a few times first:
        starting fresh forgets recent scales. A state that is not a state (a hand edit, a bad
        restore: `state.json` of `null`, `pools` a list, `last_replicas: 1e999`) is replaced at
        once; so is one still unreachable after the retries. The decision core seeds an empty
        state with the current replicas (`decision/core.py`, `history`), so the new leader
        holds every role for one stabilization window, which is what a lost recent scale-up
        needs; the first tick's save overwrites the unreadable ConfigMap."""
        delays = backoff.Delays(initial_s=1.0, max_s=8.0)
        why = ""
        partial = ScaleState()
        for attempt in range(1, 5):
            try:
                state = await self.state_store.load(mono_now=self._clock(),
                                                    wall_now=self._wall())
            except StateUnreadable as exc:
                # The shards that could be read are kept; the others start fresh.
                why, partial = str(exc), exc.partial
                break
            except Exception as exc:  # every failure is retried, then replaced
                self._api_failed("read_state", exc)
                why = f"{type(exc).__name__}: {exc}"[:300]
                delay = delays.next()
                log.warning("state_load_failed", error=why, attempt=attempt, retry_in_s=delay)
                self.health.problem = f"state ConfigMap: {why}"
                if attempt < 4:
                    await backoff.sleep(delay)
                continue
            self.health.api_reachable = True
            self._saved_state = state.to_json()
            return state
        log.error("state_replaced", error=why, action="starting from a fresh state")
        self.health.problem = f"state ConfigMap unreadable, replaced by a fresh state: {why}"
        self._saved_state = None  # the first tick overwrites it
        return partial

    async def _tick_forever(self) -> None:
        policies = self.policy_source
        while True:
            share = self._share(await policies.wait())
            version = policies.version
            if share is not None:
                break
            await self._idle_until_policy_changes(version, "no pool in this replica's buckets")
        policy = share
        state = await self._restore_state()
        # The whole metrics fetch of a tick gets 80 % of its period (each query also has its own
        # deadline): a fetch that misses it is missing data, a hold, and the tick still ends in
        # time to decide, write and start the next one on schedule.
        loop = Loop(policy, self.source, FencedActuator(self.actuator, self.may_write),
                    state=state, hooks=[self.telemetry.record_decision],
                    fetch_deadline_s=FETCH_SHARE_OF_TICK * self.settings.tick_s)
        self.loop = loop
        await self._backfill_forecasts(loop)
        tick_s = self.settings.tick_s
        # A failed tick waits 2, 4, ... 64 ticks (at most 5 minutes) before the next try.
        delays = backoff.Delays(initial_s=2 * tick_s, max_s=min(64 * tick_s, 300.0))
        failures = 0
        last_ok = self._clock()
        next_at = self._clock()
        while True:
            if policies.version != version:
                version = policies.version
                if policies.current is None:
                    # Every policy document was deleted: nothing is ours to scale any more.
                    log.warning("policy_none", action="idle until a policy ConfigMap appears")
                    await policies.wait()
                    continue
                share = self._share(policies.current)
                if share is None:
                    await self._idle_until_policy_changes(version, "no pool of ours")
                    continue
                self._apply_policy(loop, share)
                await self._backfill_forecasts(loop)
            try:
                report = await self.tick_once(loop)
                pools = loop.policy.pools
                if pools and len(report.unobserved) == len(pools):
                    # Ticking without seeing any Deployment is not leading: count it as a
                    # failed tick (a standby may reach the API server where this replica cannot).
                    first = next(iter(report.unobserved.values()))
                    msg = f"no pool observed ({len(pools)} unobserved; first: {first})"
                    raise errors.ActuationUnavailable(msg)
            except Exception as exc:  # the loop survives; cancellation propagates
                failures += 1
                failing_for = self._clock() - last_ok
                delay = delays.next()
                if self.settings.leader_election:
                    # Do not sleep past the hand-over bound.
                    delay = min(delay, max(self.step_down_after_s - failing_for, 0.0))
                log.exception("tick_failed", error=repr(exc), failures=failures,
                              failing_for_s=round(failing_for, 1), retry_in_s=delay)
                self.health.report("tick", f"{type(exc).__name__}: {exc}"[:300]
                                   + f" ({failures} failed ticks in a row)")
                if self.settings.leader_election and failing_for >= self.step_down_after_s:
                    # A leader that cannot tick must not hold the Lease: hand it over.
                    self._step_down.set()
                    await asyncio.Event().wait()  # cancelled by the hand-over
                await backoff.sleep(delay)
                next_at = self._clock()
                continue
            if failures:
                self.health.report("tick", None)
            failures = 0
            last_ok = self._clock()
            delays.reset()
            next_at += tick_s
            now = self._clock()
            # Fell behind (a slow API call): skip the missed ticks rather than bursting.
            next_at = max(next_at, now)
            await backoff.sleep(next_at - now)

    def _apply_policy(self, loop: Loop, policy: PolicyFile) -> None:
        try:
            loop.set_policy(policy)
        except errors.AutoscalerError as exc:
            # A plug-in could not be built from a document that validated; keep the old one.
            log.error("policy_apply_failed", error=str(exc))
            self.telemetry.config_reload(ok=False)
            return
        log.info("policy_applied", pools=[p.name for p in policy.pools], dry_run=policy.dry_run)

    async def _backfill_forecasts(self, loop: Loop) -> None:
        from autoscaler.controller import backfill  # noqa: PLC0415 - only leaders pay

        s = self.settings
        await backfill.refill(loop, self.source, history_s=s.forecast_backfill_s,
                              timeout_s=s.forecast_backfill_timeout_s, clock=self._clock,
                              wall=self._wall)

    async def tick_once(self, loop: Loop) -> TickReport:
        """One tick plus its side effects (Events, saved state, store, telemetry)."""
        t0 = self._clock()
        report = await loop.tick(t0)
        self.ticks += 1
        if self.ticks == 1:
            _freeze_startup_objects()
        wall = self._wall()
        if len(report.unobserved) < len(loop.policy.pools) or not loop.policy.pools:
            self.health.api_reachable = True
        await self._record_scales(loop, report, wall=wall)
        state_json = loop.state.to_json()
        if state_json != self._saved_state and self.is_leader():
            try:
                await self.state_store.save(loop.state, report.decision, mono_now=self._clock(),
                                            wall_now=self._wall(),
                                            identity=self.settings.identity)
            except (ApiException, OSError, TimeoutError, errors.ActuationError) as exc:
                # Next tick retries (the state still differs); scaling goes on meanwhile.
                self._api_failed("write_state", exc)
                log.warning("state_save_failed", error=repr(exc))
            else:
                self._saved_state = state_json
        self.store.record(report.decision, loop.policy, snapshot=report.snapshot,
                          applied=report.applied)
        self.health.last_tick = self._clock()
        self.telemetry.observe_tick(self._clock() - t0)
        return report

    async def _record_scales(self, loop: Loop, report: TickReport, *, wall: float) -> None:
        for (pool, role), replicas in report.applied.items():
            rd = report.decision.pools[pool].roles[role]
            ref = loop.policy.pool(pool).roles[role].deployment
            self.state_store.last_scale.setdefault(pool, {})[role.value] = {
                "from": rd.current, "to": replicas, "driver": rd.driver,
                "clipped_by": list(rd.clipped_by), "time": rfc3339(wall),
            }
            await self.events.record(
                ObjectRef.deployment(ref, self.actuator.uid(ref)),
                reason="ScaledUp" if replicas > rd.current else "ScaledDown",
                message=f"New size: {replicas}; pool {pool} {role.value}: {rd.reason}",
            )


@functools.cache
def _freeze_startup_objects() -> None:
    """Move every object alive after the first tick (modules, clients, the policy, built
    policies, caches) to the collector's permanent generation, once per process. A tick at
    1,000 pools allocates hundreds of thousands of short-lived objects, and each full
    collection they trigger used to traverse this long-lived set too: freezing it took 0.2
    CPU-s off a 1.3 CPU-s tick (benchmarks/controller_scale.py, median of 8 ticks, 2 runs
    each). Frozen objects are still freed by reference counting; only cycles among them would
    outlive the process, and the set is bounded (it is what the first tick built). Cached:
    it runs once per process."""
    gc.collect()
    gc.freeze()
