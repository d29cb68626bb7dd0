"""Discrete-event simulation of vLLM V1 serving on Kubernetes, fast enough for backtests.

Model (constants in profile.py; the model and its sources: docs/simulator.md):

* A *pool* serves one request stream, either **disaggregated** (a prefill and a decode
  Deployment) or **aggregated** (one Deployment doing both phases). Each Deployment has replicas;
  each replica is one vLLM engine with its own scheduler, KV cache and metrics.
* **Scheduler step** (vLLM V1, simplified): a step has a budget of `max_num_batched_tokens`.
  Every decoding request takes 1 token; prefilling requests (running first, then new ones from
  the FIFO waiting queue) take chunks of what is left (chunked prefill). A step allocates KV for
  its tokens; if KV is short the most recently admitted running request is preempted (LIFO victim,
  RECOMPUTE: its KV is dropped, it goes back to the head of the queue and is re-prefilled over
  prompt + generated tokens later) until the step fits; no new request is admitted in a step that
  preempted. New requests are admitted while running < max_num_seqs and the head of the queue
  fits in the KV left (the head blocks the rest: FCFS).
* **Step time**: pure prefill `alpha_p + beta_p·sum(c) + gamma_p·sum(c² + 2·c·p) + s·S` (c =
  chunk sizes, p = each chunk's offset in its prompt: a chunk attends to the whole prefix, so a
  prompt costs gamma_p·P² however it is chunked; S = sequences in the step, s = the scheduler's
  per-sequence cost); pure decode `alpha_d + (beta_d + s)·B + gamma_d·sum(L)`; a mixed step
  (aggregated replicas, or decode replicas recomputing a preempted request) costs the decode
  step plus the prefill chunk terms (one fixed cost, alpha_d, since both read the weights once).
  At TP > 1 a step of T tokens adds `ar·max(T - T_ar, 0)`: the all-reduces' bandwidth cost once
  they are no longer latency-bound (their latency is inside alpha_d).
* **KV** is counted in tokens (no 16-token block rounding, no watermark). A request holds
  prompt + generated tokens once decoding; a prefilling request holds its computed tokens.
* **Prefill replica** (disaggregated): a request is done on it when its prefill completes (the
  step emits its first token, as vLLM's P pod does with max_tokens=1); the KV is then pushed to
  the least-loaded ready decode replica. The P replica frees its KV at once (no modelling of
  pending NIXL sends).
* **Decode replica**: an arriving request waits (as vLLM's WAITING_FOR_REMOTE_KVS) until a step
  boundary admits it, which reserves prompt+1 KV tokens and a seat and starts the transfer
  (`bytes / bandwidth + setup`). When the transfer lands the first token reaches the client
  (TTFT, so an idle P/D pair gives TTFT = idle prefill + transfer) and the request joins the
  decode batch at the next step boundary.
* **Routing**: each request goes to the least-loaded ready, non-draining replica of the role
  (outstanding prompt tokens on prefill replicas, outstanding requests otherwise; ties go to the
  oldest replica), or with `prefix-aware` to the one holding most of its leading blocks, or
  with `random` to one drawn uniformly (seeded), as a plain Kubernetes Service's kube-proxy
  does for each new connection. With no ready replica, requests wait in the pool's gateway
  queue.
* **Kubernetes**: `scale()` adds replicas that hold GPUs from the request but serve only after
  the profile's cold start; removal takes not-yet-ready replicas first (newest first), then the
  most recently ready (the ReplicaSet's deletion ranking); a removed ready replica takes no new
  requests and drains its queue and batch before it releases its GPUs. Initial replicas are ready
  at time 0.

Speed: between events a decode replica's batch is constant, so its next k steps have times
tau0 + g·j (the context grows by B tokens a step, g = gamma_d·B): k steps take k·tau0 + g·k(k-1)/2.
The engine jumps straight to the next completion, KV exhaustion, transfer landing or arrival by
solving that quadratic, and adds the k steps' tokens and ITL observations in closed form. Steps
with prefill work (chunks of up to 8192 tokens, ~0.2 s) are simulated one by one.
`max_segment_steps=1` disables the jump (one event per step): the reference the tests compare
the closed form against.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import operator
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from autoscaler import errors
from autoscaler.sim.vllm_metrics import VllmMetrics
from autoscaler.types import Role

if TYPE_CHECKING:
    from autoscaler.profile import Profile
    from autoscaler.spec import DeploymentRef, PolicyFile

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Request phases.
_WAIT, _PREFILL, _DECODE, _XFER, _DONE = range(5)
# Replica step modes: idle, one explicit (prefill-carrying) step, a closed-form decode segment.
_IDLE, _STEP, _SEGMENT = range(3)
# Replica lifecycle.
STARTING, READY, DRAINING, STOPPED = "starting", "ready", "draining", "stopped"

_load = operator.attrgetter("load")

# `random`: a plain Kubernetes Service (kube-proxy picks a ready endpoint per connection, and
# vLLM's benchmark client opens one connection per request), no gateway in front.
ROUTING_POLICIES = ("least-loaded", "prefix-aware", "random")


class _Req:
    """One request's mutable state while it moves through the pool."""

    __slots__ = (
        "arrival",
        "computed",
        "fin_step",
        "first",
        "gen",
        "gen_join",
        "hashes",
        "i",
        "join_step",
        "last_tok",
        "output",
        "phase",
        "preempted",
        "prompt",
        "remote",
        "t_enter",
        "t_first",
        "t_sched",
        "target",
        "xfer_done",
    )

    def __init__(
        self, i: int, arrival: float, prompt: int, output: int, hashes: Sequence[int] | None = None
    ) -> None:
        self.i = i
        self.hashes = hashes  # block hashes of the prompt's full blocks (prefix caching)
        self.arrival = arrival
        self.prompt = prompt
        self.output = output
        self.gen = 0  # tokens generated so far (valid while not decoding; see Replica._gen)
        self.computed = 0  # prefill tokens computed towards `target`
        self.target = (
            prompt  # tokens to prefill before the next token (prompt, or all on recompute)
        )
        self.remote = False  # arrives at a decode replica: KV comes over the wire
        self.phase = _WAIT
        self.t_enter = arrival  # arrival at the current replica (its vLLM's request clock)
        self.t_sched = -1.0  # first scheduled on the current replica (-1: not yet)
        self.t_first = -1.0  # first token on the current replica
        self.last_tok = 0.0
        self.join_step = 0
        self.gen_join = 0
        self.fin_step = -1
        self.xfer_done = 0.0
        self.first = math.nan  # the client's first token (from any replica)
        self.preempted = 0


def _steps_within(tau0: float, g: float, dt: float) -> int:
    """Largest k >= 0 with k·tau0 + g·k(k-1)/2 <= dt: decode steps finished within dt."""
    if dt < tau0:
        return 0
    if g <= 0.0:
        k = int(dt / tau0)
    else:
        b = tau0 - g / 2.0
        k = int((-b + math.sqrt(b * b + 2.0 * g * dt)) / g)
    # The float solution can be off by one either way.
    while (k + 1) * tau0 + g * (k + 1) * k / 2.0 <= dt:
        k += 1
    while k > 0 and k * tau0 + g * k * (k - 1) / 2.0 > dt:
        k -= 1
    return k


class _StepPlan:
    """The step being planned at a boundary: KV left, token budget left, KV the step needs,
    decoding requests in it and the prefill chunks (request, tokens) it carries."""

    __slots__ = ("budget", "chunks", "dec", "free", "need")

    def __init__(self, *, free: int, budget: int, need: int, dec: int) -> None:
        self.free = free
        self.budget = budget
        self.need = need
        self.dec = dec
        self.chunks: list[tuple[_Req, int]] = []


class Replica:
    """One vLLM engine (pod) of a simulated Deployment."""

    def __init__(
        self, sim: Simulation, dep: SimDeployment, idx: int, *, t_requested: float
    ) -> None:
        p = dep.profile
        self.sim = sim
        self.dep = dep
        self.pool = dep.pool
        self.idx = idx
        self.name = f"{dep.name}-{idx}"
        self.role = dep.role
        self.is_prefill = dep.role is Role.PREFILL
        self.status = STARTING
        self.t_requested = t_requested
        self.t_ready: float | None = None
        self.t_drain: float | None = None
        self.t_stop: float | None = None
        self.metrics = VllmMetrics(model_name=p.model_name, kv_capacity_tokens=p.kv_capacity_tokens)
        # Constants in seconds.
        self.cap = p.kv_capacity_tokens
        self.max_seqs = p.max_num_seqs
        self.budget = p.max_num_batched_tokens
        self.pa = p.prefill_alpha_ms / 1000.0
        self.pb = p.prefill_beta_ms_per_token / 1000.0
        self.pg = p.prefill_gamma_ms_per_token2 / 1000.0
        self.da = p.decode_alpha_ms / 1000.0
        # Per decoding sequence: its GPU cost plus the scheduler's per-sequence CPU cost.
        self.db = (p.decode_beta_ms_per_seq + p.sched_ms_per_seq) / 1000.0
        self.ss = p.sched_ms_per_seq / 1000.0
        self.dg = p.decode_gamma_ms_per_ctx_token / 1000.0
        self.ar = p.allreduce_ms_per_token / 1000.0
        self.ar0 = p.allreduce_latency_tokens
        self.profile = p
        self.max_segment_steps = sim.max_segment_steps
        # Prefix cache (vLLM V1 default on): an LRU of block hashes sized from the KV budget.
        # Decode replicas get their KV over the wire and do not look up prompts.
        self.cache: OrderedDict[int, None] | None = None
        self.block_tokens = dep.pool.block_tokens
        self.cache_blocks = max(1, self.cap // self.block_tokens)
        if dep.pool.has_hashes and dep.role is not Role.DECODE:
            self.cache = OrderedDict()
        # Scheduler state.
        self.waiting: deque[_Req] = deque()
        self.running: dict[int, _Req] = {}  # admission order (LIFO victims: popitem)
        self.pref: list[_Req] = []  # running requests still prefilling, in order
        self.xfer: list[_Req] = []  # admitted, KV in flight
        self.fresh: list[_Req] = []  # joined from a transfer; first ITL needs a fix
        self.dec_heap: list[tuple[int, int, _Req]] = []  # (finish step, id, request)
        self.n_dec = 0
        self.s_dec = 0  # KV tokens held by decoding requests
        self.s_pref = 0  # KV tokens held by prefilling requests
        self.reserved = 0  # KV tokens reserved for transfers in flight
        self.step_idx = 0  # decode steps done (a request's token count derives from it)
        self.pending_iter = 0  # joined transfers' tokens, for the next step's iteration_tokens
        self.load = 0  # routing load: prompt tokens (prefill role) or requests outstanding
        # In-flight work.
        self.mode = _IDLE
        self.ver = 0
        self.kicked = False
        self.st_chunks: list[tuple[_Req, int]] = []
        self.st_dec = 0
        self.st_dur = 0.0
        self.sg_t0 = 0.0
        self.sg_k = 0
        self.sg_tau0 = 0.0
        self.sg_g = 0.0
        self.sg_b = 0

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.running) + len(self.xfer)

    def gpu_seconds(self, now: float) -> float:
        end = now if self.t_stop is None else min(self.t_stop, now)
        return max(0.0, end - self.t_requested) * self.dep.profile.gpus_per_replica

    def _maybe_stop(self, t: float) -> None:
        if (
            self.status == DRAINING
            and self.mode == _IDLE
            and not self.waiting
            and not self.running
            and not self.xfer
        ):
            self.status = STOPPED
            self.t_stop = t
            self.ver += 1
            self.dep.on_stopped(self, t)

    # --- arrivals -------------------------------------------------------------------------

    def enqueue(self, r: _Req, t: float) -> None:
        """A request routed to this replica at time t."""
        blocked = bool(self.waiting)
        r.phase = _WAIT
        r.t_enter = t
        r.t_sched = -1.0
        self.waiting.append(r)
        self.load += r.prompt if self.is_prefill else 1
        if self.mode == _IDLE:
            if not self.kicked:
                # Plan once the current event is over, so requests arriving together (same
                # timestamp, or handed off by the same prefill step) share the first step.
                self.kicked = True
                self.sim.kicks.append(self)
        elif self.mode == _SEGMENT and not blocked:
            # A non-empty queue was blocked at the last boundary and stays blocked until a
            # completion (which ends the segment anyway): only a lone arrival needs a boundary.
            self._boundary_at(t)

    def _boundary_at(self, t: float) -> None:
        """Cut the current decode segment at the first step boundary >= t."""
        dt = t - self.sg_t0
        tau0, g = self.sg_tau0, self.sg_g
        k = _steps_within(tau0, g, dt)
        if k * tau0 + g * k * (k - 1) / 2.0 < dt:
            k += 1
        k = max(k, 1)
        if k < self.sg_k:
            self.sg_k = k
            self.ver += 1
            t_end = self.sg_t0 + k * tau0 + g * k * (k - 1) / 2.0
            self.sim.push(t_end, self._on_event, self.ver)

    # --- events ---------------------------------------------------------------------------

    def _on_event(self, ver: int) -> None:
        if ver != self.ver:
            return
        t = self.sim.now
        mode = self.mode
        self.mode = _IDLE
        if mode == _STEP:
            self._end_step(t)
        elif mode == _SEGMENT:
            self._apply_decode(self.sg_k)
            self._complete_decodes(t)
        self._plan(t)

    def sync(self, t: float) -> None:
        """Bring counters and gauges up to the last step boundary <= t (for a scrape) without
        changing the plan: the pending event stays valid."""
        if self.mode == _SEGMENT:
            k = min(_steps_within(self.sg_tau0, self.sg_g, t - self.sg_t0), self.sg_k - 1)
            if k > 0:
                self._apply_decode(k)
                self.metrics.kv_usage = (self.s_dec + self.s_pref + self.reserved) / self.cap

    def _gen(self, r: _Req) -> int:
        """Tokens generated by r so far (decoding requests advance with step_idx)."""
        if r.phase == _DECODE:
            return r.gen_join + self.step_idx - r.join_step
        return r.gen

    # --- the scheduler --------------------------------------------------------------------

    def kick(self) -> None:
        """Plan now if still idle (called by the loop after the event that enqueued work)."""
        if self.kicked:
            self.kicked = False
            if self.mode == _IDLE and self.status != STOPPED:
                self._plan(self.sim.now)

    def _plan(self, t: float) -> None:
        """At a step boundary with nothing in flight: schedule the next step or segment.

        In order: land transfers; take the fast path (a pure decode segment) when nothing else
        is pending; else give the running prefills their chunks (`_continue_prefills`), then
        either preempt until the step fits (`_preempt_until_fits`) or admit from the queue
        (`_admit_waiting`), publish the gauges, and launch the step (`_launch`)."""
        self.kicked = False
        if self.xfer:
            self._join_transfers(t)
        dec = self.n_dec
        if dec and not self.pref and not self.waiting and not self.xfer:
            free = self.cap - self.s_dec - self.s_pref - self.reserved
            if dec <= free:
                # Fast path (most boundaries of a decode replica): a pure decode segment.
                m = self.metrics
                m.waiting = 0
                m.running = len(self.running)
                m.kv_usage = (self.cap - free) / self.cap
                self._start_segment(t, dec, free, preempted=False)
                return
        plan = self._continue_prefills()
        preempted = plan.need > plan.free
        if preempted:
            self._preempt_until_fits(plan, t)
        else:
            self._admit_waiting(plan, t)
        m = self.metrics
        m.waiting = len(self.waiting) + len(self.xfer)
        m.running = len(self.running)
        m.kv_usage = (self.s_dec + self.s_pref + self.reserved) / self.cap
        self._launch(plan, t, preempted=preempted)

    def _continue_prefills(self) -> _StepPlan:
        """The step's starting point: every decoding request takes one token of the budget and
        KV, and the running prefills take chunks of what is left, in order."""
        dec = self.n_dec
        plan = _StepPlan(
            free=self.cap - self.s_dec - self.s_pref - self.reserved,
            budget=self.budget - dec,
            need=dec,
            dec=dec,
        )
        for r in self.pref:
            if plan.budget <= 0:
                break
            c = min(r.target - r.computed, plan.budget)
            plan.chunks.append((r, c))
            plan.budget -= c
            plan.need += c
        return plan

    def _preempt_until_fits(self, plan: _StepPlan, t: float) -> None:
        """KV is short: preempt the most recently admitted running request (RECOMPUTE: its KV
        is dropped and it goes back to the head of the queue) until the step fits."""
        while plan.need > plan.free and self.running:
            _, v = self.running.popitem()
            if v.phase == _DECODE:
                v.gen = self._gen(v)
                kv = v.prompt + v.gen
                self.s_dec -= kv
                self.n_dec -= 1
                plan.dec -= 1
                plan.need -= 1
                plan.budget += 1
                v.fin_step = -1
                if v in self.fresh:
                    # Joined from a transfer, no decode step yet: its last token is the
                    # landing (last_tok already holds it).
                    self.fresh.remove(v)
                else:
                    # Its last token came out of the step that ended at this boundary.
                    v.last_tok = t
            else:
                # Prefilling: a first prefill (no token yet) or a recompute preempted again,
                # whose last token is still the one before the first preemption; last_tok
                # must keep it or the stall before the second preemption is lost.
                kv = v.computed
                self.s_pref -= kv
                self.pref.remove(v)
                for j, (cr, c) in enumerate(plan.chunks):
                    if cr is v:
                        plan.need -= c
                        plan.budget += c
                        del plan.chunks[j]
                        break
            plan.free += kv
            v.target = v.prompt + v.gen
            v.computed = 0
            v.phase = _WAIT
            self.waiting.appendleft(v)
            self.metrics.preemptions += 1
            self.pool.preempted(v)

    def _admit_waiting(self, plan: _StepPlan, t: float) -> None:
        """Admit from the head of the FIFO queue while seats, budget and KV last (the head
        blocks the rest): a remote request reserves KV and starts its transfer; a local one
        starts its prefill after any cached prefix blocks."""
        waiting = self.waiting
        seats = self.max_seqs - len(self.running) - len(self.xfer)
        while waiting and seats > 0:
            r = waiting[0]
            if r.remote:
                kv = r.prompt + 1
                if kv > plan.free - plan.need:
                    break
                waiting.popleft()
                r.t_sched = t
                self.reserved += kv
                plan.free -= kv
                r.phase = _XFER
                r.xfer_done = t + self.pool.xfer_s(r.prompt)
                self.xfer.append(r)
            else:
                if plan.budget <= 0:
                    break
                hit = self._cached_tokens(r) if self.cache is not None else 0
                c = min(r.target - hit, plan.budget)
                if hit + c > plan.free - plan.need:
                    break
                waiting.popleft()
                if r.t_sched < 0:
                    r.t_sched = t
                if self.cache is not None:
                    self._admit_cached(r, hit)
                r.phase = _PREFILL
                self.running[r.i] = r
                self.pref.append(r)
                plan.chunks.append((r, c))
                plan.budget -= c
                plan.need += hit + c
            seats -= 1

    def _linear_s(self, tokens: int) -> float:
        """Profile.linear_ms in seconds: the weight read or the GEMM work, whichever is longer,
        plus the all-reduce bandwidth above its latency-bound size (TP > 1)."""
        lin = max(self.da, self.pa + self.pb * tokens)
        if tokens > self.ar0:
            lin += self.ar * (tokens - self.ar0)
        return lin

    def _launch(self, plan: _StepPlan, t: float, *, preempted: bool) -> None:
        """Start the planned work: one explicit step if it carries prefill chunks, else a
        closed-form decode segment, else wait for a transfer (or stop, if draining)."""
        dec = plan.dec
        chunks = plan.chunks
        if chunks:
            csum = 0
            attn = 0
            for cr, c in chunks:
                csum += c
                # The chunk attends to the cr.computed tokens of its prompt already in KV.
                attn += c * (c + 2 * cr.computed)
            # The weights are read once per step; the token-linear (GEMM) work only costs more
            # than that read above the roofline knee (alpha_d - alpha_p) / beta_p tokens.
            dur = self._linear_s(dec + csum)
            dur += self.db * dec + self.dg * self.s_dec + self.pg * attn + self.ss * len(chunks)
            self.st_chunks = chunks
            self.st_dec = dec
            self.st_dur = dur
            self.mode = _STEP
            self.ver += 1
            self.sim.push(t + dur, self._on_event, self.ver)
        elif dec:
            self._start_segment(t, dec, plan.free, preempted=preempted)
        else:
            self.ver += 1
            if self.xfer:
                # Idle until a transfer lands.
                self.sim.push(min(r.xfer_done for r in self.xfer), self._on_event, self.ver)
            else:
                self._maybe_stop(t)

    def _start_segment(self, t: float, dec: int, free: int, *, preempted: bool) -> None:
        """Schedule the next k pure decode steps: until the first completion, until KV runs
        out (each step needs `dec` more tokens), or one step after a preemption (the queue
        gets another look), whichever comes first; cut earlier by a landing transfer."""
        h = self.dec_heap
        while h[0][2].fin_step != h[0][0]:
            heapq.heappop(h)
        k = min(h[0][0] - self.step_idx, free // dec)
        if preempted:
            k = 1
        if self.max_segment_steps and k > self.max_segment_steps:
            k = self.max_segment_steps
        tau0 = self._linear_s(dec) + self.db * dec + self.dg * self.s_dec
        g = self.dg * dec
        self.sg_t0 = t
        self.sg_tau0 = tau0
        self.sg_g = g
        self.sg_b = dec
        self.sg_k = k
        self.mode = _SEGMENT
        self.ver += 1
        self.sim.push(t + k * tau0 + g * k * (k - 1) / 2.0, self._on_event, self.ver)
        if self.xfer:
            self._boundary_at(min(r.xfer_done for r in self.xfer))

    # --- prefix cache -----------------------------------------------------------------------

    def cached_blocks(self, hashes: Sequence[int]) -> int:
        """Leading blocks of `hashes` this replica has cached (no LRU update)."""
        cache = self.cache
        if cache is None:
            return 0
        n = 0
        for h in hashes:
            if h not in cache:
                break
            n += 1
        return n

    def _cached_tokens(self, r: _Req) -> int:
        """Tokens of r's prefill the cache would save: whole cached leading blocks of its prompt,
        less at least one token (vLLM computes the last prompt token to sample from it)."""
        if r.computed or not r.hashes:
            return 0
        return max(0, min(self.cached_blocks(r.hashes) * self.block_tokens, r.target - 1))

    def _admit_cached(self, r: _Req, hit: int) -> None:
        """Count the lookup, refresh the hit blocks and start r's prefill after them."""
        m = self.metrics
        m.prefix_queries += r.target
        m.prefix_hits += hit
        if hit:
            cache = self.cache
            assert cache is not None
            assert r.hashes is not None
            for h in r.hashes[: -(-hit // self.block_tokens)]:
                cache.move_to_end(h)
            r.computed = hit
            self.s_pref += hit

    def _cache_insert(self, hashes: Sequence[int]) -> None:
        cache = self.cache
        assert cache is not None
        for h in hashes:
            if h in cache:
                cache.move_to_end(h)
            else:
                cache[h] = None
        while len(cache) > self.cache_blocks:
            cache.popitem(last=False)

    def _join_transfers(self, t: float) -> None:
        keep: list[_Req] = []
        m = self.metrics
        pool = self.pool
        for r in self.xfer:
            if r.xfer_done > t:
                keep.append(r)
                continue
            kv = r.prompt + 1
            self.reserved -= kv
            tx = r.xfer_done
            pool.first_token_at(r, tx)
            m.ttft.observe(tx - r.t_enter)
            m.prompt_tokens += r.prompt
            # vLLM's decode pod schedules the request with its prompt computed externally and
            # emits the first token itself: the prompt and that token are in the step's
            # iteration tokens, and the token is a generated one (it is streamed from here).
            m.generation_tokens += 1
            self.pending_iter += r.prompt + 1
            r.remote = False
            r.last_tok = tx
            r.t_first = tx
            r.gen = 1
            if r.output <= 1:
                self._done(r, tx)
                continue
            r.phase = _DECODE
            self.running[r.i] = r
            self.s_dec += kv
            self.n_dec += 1
            r.join_step = self.step_idx
            r.gen_join = 1
            r.fin_step = self.step_idx + r.output - 1
            heapq.heappush(self.dec_heap, (r.fin_step, r.i, r))
            if tx < t:
                self.fresh.append(r)
        self.xfer = keep

    def _fix_fresh(self, first_end: float, tau: float) -> None:
        """Requests that joined after waiting for a boundary: their first decode ITL is the
        gap from their first token to the end of the first step, not the step time."""
        itl = self.metrics.itl
        for r in self.fresh:
            itl.counts[bisect.bisect_left(itl.bounds, tau)] -= 1
            itl.sum -= tau
            itl.count -= 1
            itl.observe(first_end - r.last_tok)
        self.fresh.clear()

    def _apply_decode(self, k: int) -> None:
        """Account k steps of the current decode segment (closed form)."""
        b = self.sg_b
        tau0 = self.sg_tau0
        g = self.sg_g
        dur = k * tau0 + g * k * (k - 1) / 2.0
        m = self.metrics
        m.itl.observe_linear(tau0, g, k, b)
        if self.fresh:
            self._fix_fresh(self.sg_t0 + tau0, tau0)
        m.generation_tokens += b * k
        if self.pending_iter:
            # Transfers that joined at this segment's start: their prompt and first token
            # count in its first step.
            m.iteration_tokens.observe(b + self.pending_iter)
            self.pending_iter = 0
            if k > 1:
                m.iteration_tokens.observe(b, k - 1)
        else:
            m.iteration_tokens.observe(b, k)
        self.step_idx += k
        self.s_dec += b * k
        self.sg_t0 += dur
        self.sg_tau0 = tau0 + g * k
        self.sg_k -= k

    def _end_step(self, t: float) -> None:
        """Apply the effects of the explicit step that just ended at t."""
        m = self.metrics
        dec = self.st_dec
        tokens = dec
        if dec:
            self.step_idx += 1
            self.s_dec += dec
            m.generation_tokens += dec
            m.itl.observe(self.st_dur, dec)
            if self.fresh:
                self._fix_fresh(t, self.st_dur)
        pool = self.pool
        for r, c in self.st_chunks:
            r.computed += c
            self.s_pref += c
            if r.computed < r.target:
                continue
            self.s_pref -= r.computed
            self.pref.remove(r)
            if self.cache is not None and r.hashes:
                self._cache_insert(r.hashes)
            if r.gen == 0:
                m.prompt_tokens += r.prompt
                m.ttft.observe(t - r.t_enter)
                r.t_first = t
                tokens += r.prompt
                if not self.is_prefill:
                    pool.first_token_at(r, t)
            else:
                # Recompute after a preemption: the next token comes after a stall.
                m.itl.observe(t - r.last_tok)
            r.gen += 1
            tokens += 1
            m.generation_tokens += 1
            r.last_tok = t
            if self.is_prefill:
                del self.running[r.i]
                self.load -= r.prompt
                r.phase = _DONE
                # The P pod's request has max_tokens=1 and ends by length after its one token.
                m.finish_request(
                    "length", t_arrival=r.t_enter, t_scheduled=r.t_sched, t_first_token=r.t_first,
                    t_end=t, prompt_tokens=r.prompt, generation_tokens=1, max_tokens=1,
                )  # fmt: skip
                pool.handoff(r, t)
            elif r.gen >= r.output:
                del self.running[r.i]
                self._done(r, t)
            else:
                r.phase = _DECODE
                self.s_dec += r.prompt + r.gen
                self.n_dec += 1
                r.join_step = self.step_idx
                r.gen_join = r.gen
                r.fin_step = self.step_idx + r.output - r.gen
                heapq.heappush(self.dec_heap, (r.fin_step, r.i, r))
        self.st_chunks = []
        if self.pending_iter:
            tokens += self.pending_iter
            self.pending_iter = 0
        if tokens:
            m.iteration_tokens.observe(tokens)
        if dec:
            self._complete_decodes(t)

    def _complete_decodes(self, t: float) -> None:
        h = self.dec_heap
        step = self.step_idx
        while h and h[0][0] <= step:
            fs, _, r = heapq.heappop(h)
            if r.fin_step != fs:
                continue  # preempted since
            del self.running[r.i]
            self.n_dec -= 1
            self.s_dec -= r.prompt + r.output
            self._done(r, t)

    def _done(self, r: _Req, t: float) -> None:
        r.phase = _DONE
        r.fin_step = -1
        r.gen = r.output
        self.load -= 1
        self.pool.finished(r, t)
        self.metrics.finish_request(
            "stop", t_arrival=r.t_enter, t_scheduled=r.t_sched, t_first_token=r.t_first, t_end=t,
            prompt_tokens=r.prompt, generation_tokens=r.output, max_tokens=r.output,
        )  # fmt: skip


class SimDeployment:
    """A simulated Deployment: its replicas, spec count and scale history."""

    def __init__(
        self, sim: Simulation, pool: SimPool, *, role: Role, namespace: str, name: str
    ) -> None:
        self.sim = sim
        self.pool = pool
        self.role = role
        self.namespace = namespace
        self.name = name
        self.profile = pool.profile
        self.replicas: list[Replica] = []  # every replica ever created
        self.starting: list[Replica] = []
        self.serving: list[Replica] = []  # ready, not draining: the routing set
        self.draining: list[Replica] = []
        self.scale_log: list[ScaleEvent] = []
        self.timeline: list[tuple[float, int, int, int, int]] = []

    @property
    def spec_replicas(self) -> int:
        return len(self.starting) + len(self.serving)

    def _record(self, t: float) -> None:
        row = (t, self.spec_replicas, len(self.serving), len(self.starting), len(self.draining))
        if self.timeline and self.timeline[-1][0] == t:
            self.timeline[-1] = row
        else:
            self.timeline.append(row)

    def _add(self, t: float, *, warm: bool) -> None:
        rep = Replica(self.sim, self, len(self.replicas), t_requested=t)
        self.replicas.append(rep)
        if warm:
            self._make_ready(rep, t)
        else:
            self.starting.append(rep)
            self.sim.push(t + self.profile.cold_start_s, self._on_ready, rep)

    def _on_ready(self, rep: Replica) -> None:
        if rep.status != STARTING:
            return  # removed while starting
        self.starting.remove(rep)
        self._make_ready(rep, self.sim.now)
        self._record(self.sim.now)

    def _make_ready(self, rep: Replica, t: float) -> None:
        rep.status = READY
        rep.t_ready = t
        self.serving.append(rep)
        self.pool.flush(self.role, t)

    def scale(self, replicas: int, t: float, *, reason: str = "") -> None:
        """Set spec.replicas: add cold-starting replicas or remove (drain) some."""
        if replicas < 0:
            msg = f"{self.namespace}/{self.name}: replicas must be >= 0, got {replicas}"
            raise errors.ActuationError(msg)
        cur = self.spec_replicas
        if replicas == cur:
            return
        self.scale_log.append(ScaleEvent(t, self.pool.name, self.role, cur, replicas, reason))
        if replicas > cur:
            for _ in range(replicas - cur):
                self._add(t, warm=False)
        else:
            for _ in range(cur - replicas):
                if self.starting:
                    rep = self.starting.pop()
                    rep.status = STOPPED
                    rep.t_stop = t
                else:
                    # The most recently ready first (ReplicaSet deletion ranking).
                    rep = max(self.serving, key=lambda r: (r.t_ready, r.idx))
                    self.serving.remove(rep)
                    self.draining.append(rep)
                    rep.status = DRAINING
                    rep.t_drain = t
                    rep._maybe_stop(t)
        self._record(t)

    def on_stopped(self, rep: Replica, t: float) -> None:
        if rep in self.draining:
            self.draining.remove(rep)
        self._record(t)

    def gpu_seconds(self, now: float) -> float:
        return sum(r.gpu_seconds(now) for r in self.replicas)

    def timeline_arrays(self) -> Timeline:
        rows = np.array(self.timeline, dtype=np.float64).reshape(-1, 5)
        return Timeline(
            t=rows[:, 0],
            replicas=rows[:, 1].astype(np.int64),
            ready=rows[:, 2].astype(np.int64),
            pending=rows[:, 3].astype(np.int64),
            draining=rows[:, 4].astype(np.int64),
        )


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """One change of a Deployment's spec.replicas."""

    t: float
    pool: str
    role: Role
    from_replicas: int
    to_replicas: int
    reason: str


@dataclass(frozen=True, slots=True)
class Timeline:
    """Step function of a Deployment's replicas: row i holds from t[i] until t[i+1]."""

    t: FloatArray
    replicas: IntArray
    ready: IntArray
    pending: IntArray
    draining: IntArray


@dataclass(frozen=True, slots=True)
class RequestResults:
    """Per-request outcome of a pool (NaN where a request has not got that far)."""

    arrival_s: FloatArray
    prompt_tokens: IntArray
    output_tokens: IntArray
    first_token_s: FloatArray
    finish_s: FloatArray
    preemptions: IntArray

    def take(self, idx: npt.NDArray[np.bool_]) -> RequestResults:
        """The requests `idx` selects (a mask)."""
        return RequestResults(
            self.arrival_s[idx],
            self.prompt_tokens[idx],
            self.output_tokens[idx],
            self.first_token_s[idx],
            self.finish_s[idx],
            self.preemptions[idx],
        )

    @property
    def ttft_s(self) -> FloatArray:
        return self.first_token_s - self.arrival_s

    @property
    def mean_itl_s(self) -> FloatArray:
        """Mean inter-token latency per request: (finish - first token) / (output - 1); NaN for
        one-token outputs (no inter-token gap) and unfinished requests."""
        gaps = (self.output_tokens - 1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (self.finish_s - self.first_token_s) / gaps
        out[gaps <= 0] = np.nan
        return out


class RequestSink(Protocol):
    """Where a pool that keeps no per-request arrays sends each finished request (e.g.
    evaluate.OutcomeTally: SLO verdicts and latency summaries in bounded memory)."""

    def add(self, record: tuple[float, int, int, float, float, int]) -> None:
        """(arrival, prompt tokens, output tokens, first token, finish, preemptions)."""


# One chunk of a pool's request stream: (arrival times, prompt tokens, output tokens[, the
# prompts' block hashes or None, ...]); a traces.Trace is one.
Chunk = tuple[Any, ...]


class SimPool:
    """One served model: its request stream and its Deployments.

    The stream is read chunk by chunk as simulated time reaches it (`arrivals`: an iterator of
    chunks in time order, e.g. `traces.iter_trace`), or given whole (`arrival_s`, ... arrays: one
    chunk). Only the current chunk is held as Python objects. Per-request results
    (`results()`) are kept in arrays that grow with the requests read (48 bytes a request),
    unless a `sink` is given: then each finished request goes to the sink and nothing
    per-request is kept (the arrays below stay empty)."""

    def __init__(
        self,
        sim: Simulation,
        name: str,
        *,
        profile: Profile,
        arrival_s: FloatArray | None = None,
        prompt_tokens: IntArray | None = None,
        output_tokens: IntArray | None = None,
        block_hashes: Sequence[Sequence[int]] | None = None,
        block_tokens: int = 16,
        routing: str = "least-loaded",
        arrivals: Iterable[Chunk] | None = None,
        sink: RequestSink | None = None,
    ) -> None:
        self.sim = sim
        self.name = name
        self.profile = profile
        if routing not in ROUTING_POLICIES:
            msg = f"pool {name}: routing must be one of {ROUTING_POLICIES}, got {routing!r}"
            raise ValueError(msg)
        if block_tokens < 1:
            msg = f"pool {name}: block_tokens must be >= 1, got {block_tokens}"
            raise ValueError(msg)
        if (arrivals is None) == (arrival_s is None):
            msg = f"pool {name}: give either arrival_s (and tokens) or arrivals, not both"
            raise ValueError(msg)
        feed: Iterator[Chunk]
        if arrival_s is not None:
            if prompt_tokens is None or output_tokens is None:
                msg = f"pool {name}: arrival_s needs prompt_tokens and output_tokens"
                raise ValueError(msg)
            if block_hashes is not None and len(block_hashes) != len(arrival_s):
                msg = f"pool {name}: block_hashes must have one entry per request"
                raise ValueError(msg)
            feed = iter([(arrival_s, prompt_tokens, output_tokens, block_hashes)])
        else:
            assert arrivals is not None
            feed = iter(arrivals)
        self.routing = routing
        # Seeded: the same replay picks the same replicas every run.
        self._route_rng = np.random.default_rng(0)
        self.block_tokens = block_tokens
        self.sink = sink
        self.keep = sink is None
        self.deployments: dict[Role, SimDeployment] = {}
        self.backlog: dict[Role, deque[_Req]] = {}
        b = profile.kv_bytes_per_token / profile.kv_transfer_bytes_per_s
        setup = profile.kv_transfer_setup_s
        self.xfer_s: Callable[[int], float] = lambda prompt: b * prompt + setup
        # Requests reach the scheduler after the API server's front-end time.
        self.frontend_s = profile.frontend_ms / 1000.0
        # Per-request arrays (keep mode), filled up to `loaded`; capacity grows by doubling.
        self.loaded = 0
        self._cap = 0
        self._arrival = np.zeros(0)
        self._prompt = np.zeros(0, dtype=np.int64)
        self._output = np.zeros(0, dtype=np.int64)
        self.first_token = np.zeros(0)
        self.finish = np.zeros(0)
        self.preemptions = np.zeros(0, dtype=np.int64)
        self.n_finished = 0
        self.n_preemptions = 0
        # The current chunk (Python lists: the event loop reads them one request at a time).
        self._feed = feed
        self._base = 0
        self._arr: list[float] = []
        self._prm: list[int] = []
        self._out: list[int] = []
        self._hashes: list[tuple[int, ...]] | None = None
        self._last_arrival = 0.0
        self._next = 0
        self._done = False
        first = self._load_chunk()
        self.has_hashes = self._hashes is not None
        if first:
            sim.push(self._arr[0] + self.frontend_s, self._on_arrival, 0)

    def _load_chunk(self) -> bool:
        """Read the next non-empty chunk into the current lists (validated as a whole, like the
        arrays given up front); False at the end of the stream."""
        for chunk in self._feed:
            arrival_s, prompt_tokens, output_tokens = chunk[:3]
            hashes = chunk[3] if len(chunk) > 3 else None
            n = len(arrival_s)
            if not (len(prompt_tokens) == n == len(output_tokens)):
                msg = "arrival_s, prompt_tokens and output_tokens must have the same length"
                raise ValueError(msg)
            if hashes is not None and len(hashes) != n:
                msg = f"pool {self.name}: block_hashes must have one entry per request"
                raise ValueError(msg)
            if not n:
                continue
            arr = np.asarray(arrival_s, dtype=np.float64)
            if np.any(np.diff(arr) < 0) or arr[0] < self._last_arrival:
                msg = "arrival_s must be sorted and >= 0"
                raise ValueError(msg)
            prm = np.maximum(np.asarray(prompt_tokens, dtype=np.int64), 1)
            out = np.maximum(np.asarray(output_tokens, dtype=np.int64), 1)
            cap = self.profile.kv_capacity_tokens
            too_long = np.flatnonzero(prm + out > cap)
            if too_long.size:
                # vLLM rejects requests beyond max_model_len; the engine would livelock on them.
                i = int(too_long[0])
                msg = (
                    f"request {self.loaded + i}: {prm[i]} + {out[i]} tokens exceed "
                    f"the KV capacity of {cap} tokens"
                )
                raise ValueError(msg)
            self._base = self.loaded
            if self.keep:
                self._grow(self.loaded + n)
                lo, hi = self.loaded, self.loaded + n
                self._arrival[lo:hi] = arr
                self._prompt[lo:hi] = prm
                self._output[lo:hi] = out
            self.loaded += n
            self._last_arrival = float(arr[-1])
            self._arr = arr.tolist()
            self._prm = prm.tolist()
            self._out = out.tolist()
            if self.loaded == n:
                self._hashes = None if hashes is None else [tuple(h) for h in hashes]
            elif self._hashes is not None:
                # A stream decides prefix caching by its first chunk.
                self._hashes = [tuple(h) for h in hashes] if hashes is not None else [()] * n
            return True
        self._done = True
        return False

    def _grow(self, n: int) -> None:
        if n <= self._cap:
            return
        cap = max(n, 2 * self._cap, 1024)

        def grown(a: npt.NDArray[Any], fill: float) -> npt.NDArray[Any]:
            out = np.full(cap, fill, dtype=a.dtype)
            out[: len(a)] = a
            return out

        self._arrival = grown(self._arrival, 0.0)
        self._prompt = grown(self._prompt, 0)
        self._output = grown(self._output, 0)
        self.first_token = grown(self.first_token, math.nan)
        self.finish = grown(self.finish, math.nan)
        self.preemptions = grown(self.preemptions, 0)
        self._cap = cap

    @property
    def arrival_s(self) -> FloatArray:
        """Arrival times of the requests read so far (keep mode)."""
        return self._arrival[: self.loaded]

    @property
    def prompt_tokens(self) -> IntArray:
        return self._prompt[: self.loaded]

    @property
    def output_tokens(self) -> IntArray:
        return self._output[: self.loaded]

    @property
    def disaggregated(self) -> bool:
        return Role.PREFILL in self.deployments

    @property
    def entry_role(self) -> Role:
        return Role.PREFILL if self.disaggregated else Role.AGGREGATED

    def _on_arrival(self, i: int) -> None:
        t = self.sim.now
        role = self.entry_role
        fe = self.frontend_s
        base = self._base
        arr, prm, out, hashes = self._arr, self._prm, self._out, self._hashes
        j = i - base
        n = len(arr)
        # Several requests can share a timestamp: take them all in one event.
        while True:
            h = None if hashes is None else hashes[j]
            self.route(role, _Req(base + j, arr[j], prm[j], out[j], h), t)
            j += 1
            if j >= n:
                if not self._load_chunk():
                    self._next = base + j
                    return
                base = self._base
                arr, prm, out, hashes = self._arr, self._prm, self._out, self._hashes
                j, n = 0, len(arr)
            if arr[j] + fe > t:
                break
        self._next = base + j
        self.sim.push(arr[j] + fe, self._on_arrival, base + j)

    def route(self, role: Role, r: _Req, t: float) -> None:
        serving = self.deployments[role].serving
        if not serving:
            self.backlog.setdefault(role, deque()).append(r)
            return
        if len(serving) == 1:
            best = serving[0]
        elif self.routing == "prefix-aware" and r.hashes and role is not Role.DECODE:
            # llm-d's prefix-cache scorer: most cached leading blocks first, then least load.
            hashes = r.hashes
            best = max(serving, key=lambda rep: (rep.cached_blocks(hashes), -rep.load))
        elif self.routing == "random":
            best = serving[int(self._route_rng.integers(len(serving)))]
        else:
            best = min(serving, key=_load)
        best.enqueue(r, t)

    def flush(self, role: Role, t: float) -> None:
        q = self.backlog.get(role)
        while q:
            self.route(role, q.popleft(), t)

    def handoff(self, r: _Req, t: float) -> None:
        """Prefill done on a P replica: send the request (and its KV) to a decode replica."""
        r.remote = True
        r.phase = _WAIT
        self.route(Role.DECODE, r, t)

    def first_token_at(self, r: _Req, t: float) -> None:
        """The client got r's first token at t."""
        r.first = t
        if self.keep:
            self.first_token[r.i] = t

    def preempted(self, r: _Req) -> None:
        r.preempted += 1
        self.n_preemptions += 1
        if self.keep:
            self.preemptions[r.i] += 1

    def finished(self, r: _Req, t: float) -> None:
        self.n_finished += 1
        if self.keep:
            self.finish[r.i] = t
        else:
            assert self.sink is not None
            self.sink.add((r.arrival, r.prompt, r.output, r.first, t, r.preempted))

    def results(self) -> RequestResults:
        """Per-request outcomes of the requests read so far (not in sink mode)."""
        if not self.keep:
            msg = f"pool {self.name} sends finished requests to a sink and keeps no results"
            raise ValueError(msg)
        n = self.loaded
        return RequestResults(
            arrival_s=self._arrival[:n].copy(),
            prompt_tokens=self._prompt[:n].copy(),
            output_tokens=self._output[:n].copy(),
            first_token_s=self.first_token[:n].copy(),
            finish_s=self.finish[:n].copy(),
            preemptions=self.preemptions[:n].copy(),
        )

    def prefix_cache_hit_rate(self) -> float:
        """Prefix-cache hits / queries (tokens) over the pool's replicas so far; nan if the
        pool has no block hashes (no lookups)."""
        q = h = 0
        for dep in self.deployments.values():
            for rep in dep.replicas:
                q += rep.metrics.prefix_queries
                h += rep.metrics.prefix_hits
        return h / q if q else math.nan

    @property
    def arrivals_done(self) -> bool:
        return self._done and self._next >= self.loaded

    @property
    def arrived(self) -> int:
        """Requests that have arrived so far."""
        return self._next

    def outstanding(self) -> int:
        """Requests arrived and not finished."""
        return self._next - self.n_finished


def _block_tokens(stream: Any) -> int:
    """Tokens per block hash of a stream (`traces.Stream` says; 16, vLLM's, otherwise)."""
    return int(getattr(stream, "block_tokens", 16))


class Simulation:
    """The event loop, the pools and their Deployments.

    Typical use (the backtest)::

        sim = Simulation.from_policy(policy, {"chat": workload}, profile=builtin("llama-8b-h100"))
        t = 0.0
        while t < horizon:
            t += 15.0
            sim.advance_to(t)
            await loop.tick(t)       # reads SimMetricsSource, writes SimActuator
        results = sim.pool("chat").results()
    """

    def __init__(self, *, max_segment_steps: int = 0) -> None:
        """`max_segment_steps` > 0 caps closed-form decode jumps (1 = step by step)."""
        self.now = 0.0
        self.max_segment_steps = max_segment_steps
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self.pools: dict[str, SimPool] = {}
        self._deployments: dict[tuple[str, str], SimDeployment] = {}
        self.events_processed = 0
        # Idle replicas that got work during the current event; planned right after it.
        self.kicks: list[Replica] = []

    # --- construction ---------------------------------------------------------------------

    def add_pool(
        self,
        name: str,
        *,
        profile: Profile,
        deployments: Mapping[Role, tuple[str, str]],
        arrival_s: FloatArray | None = None,
        prompt_tokens: IntArray | None = None,
        output_tokens: IntArray | None = None,
        initial_replicas: Mapping[Role, int] | None = None,
        block_hashes: Sequence[Sequence[int]] | None = None,
        block_tokens: int = 16,
        routing: str = "least-loaded",
        arrivals: Iterable[Chunk] | None = None,
        sink: RequestSink | None = None,
    ) -> SimPool:
        """Add a pool: `deployments` maps each role (prefill+decode, or aggregated) to a
        (namespace, name); `initial_replicas` are ready at time 0 (default 1 per role).
        `block_hashes` (one sequence per request, each hash covering `block_tokens` prompt
        tokens, chained as vLLM and Mooncake hash them) turns on the replicas' prefix caches;
        `routing` is least-loaded, prefix-aware or random. `arrivals` streams the requests
        instead of the arrays, and `sink` takes finished requests instead of per-request
        results (see SimPool)."""
        roles = set(deployments)
        if roles not in ({Role.PREFILL, Role.DECODE}, {Role.AGGREGATED}):
            msg = f"pool {name}: roles must be prefill+decode or aggregated, got {sorted(roles)}"
            raise ValueError(msg)
        if name in self.pools:
            msg = f"pool {name} already exists"
            raise ValueError(msg)
        pool = SimPool(
            self,
            name,
            profile=profile,
            arrival_s=arrival_s,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            block_hashes=block_hashes,
            block_tokens=block_tokens,
            routing=routing,
            arrivals=arrivals,
            sink=sink,
        )
        self.pools[name] = pool
        for role, (ns, dep_name) in deployments.items():
            if (ns, dep_name) in self._deployments:
                msg = f"Deployment {ns}/{dep_name} is already simulated"
                raise ValueError(msg)
            dep = SimDeployment(self, pool, role=role, namespace=ns, name=dep_name)
            pool.deployments[role] = dep
            self._deployments[(ns, dep_name)] = dep
            n0 = 1 if initial_replicas is None else initial_replicas.get(role, 1)
            for _ in range(n0):
                dep._add(self.now, warm=True)
            dep._record(self.now)
        return pool

    @classmethod
    def from_policy(
        cls,
        policy: PolicyFile,
        workloads: Mapping[str, tuple[Any, ...] | Iterable[Chunk]],
        *,
        profile: Profile | Mapping[str, Profile],
        initial_replicas: Mapping[str, Mapping[Role, int]] | None = None,
        max_segment_steps: int = 0,
        routing: str = "least-loaded",
        sinks: Mapping[str, RequestSink] | None = None,
    ) -> Simulation:
        """A simulation of every pool of a policy file that has a workload.

        `workloads` maps pool name -> (arrival_s, prompt_tokens, output_tokens[, block_hashes,
        block_tokens]), e.g. a trace-loader or workload-generator result (a Trace). `profile` is
        one profile for all pools or one per pool name. Initial replicas default to each role's
        min_replicas (at least 1), ready at time 0. `routing` (least-loaded or prefix-aware)
        applies to every pool. A workload that is not a tuple is a stream of such chunks
        (`traces.iter_trace`), read as simulated time reaches it; `sinks` maps pool name -> a
        RequestSink taking that pool's finished requests (see SimPool).
        """
        sim = cls(max_segment_steps=max_segment_steps)
        unknown = sorted(set(workloads) - {p.name for p in policy.pools})
        if unknown:
            msg = f"workloads for unknown pool(s): {', '.join(unknown)}"
            raise ValueError(msg)
        for pool in policy.pools:
            if pool.name not in workloads:
                continue
            prof = profile if not isinstance(profile, Mapping) else profile[pool.name]
            init = {role: max(1, spec.min_replicas) for role, spec in pool.roles.items()}
            if initial_replicas is not None and pool.name in initial_replicas:
                init.update(initial_replicas[pool.name])
            work = workloads[pool.name]
            sink = None if sinks is None else sinks.get(pool.name)
            common: dict[str, Any] = {
                "profile": prof,
                "deployments": {
                    role: (spec.deployment.namespace, spec.deployment.name)
                    for role, spec in pool.roles.items()
                },
                "initial_replicas": init,
                "sink": sink,
                "routing": routing,
            }
            if not isinstance(work, tuple):
                sim.add_pool(pool.name, arrivals=work, block_tokens=_block_tokens(work), **common)
                continue
            arrival, prompt, output, *extra = work
            # A Trace also carries its block hashes and tokens per hash (prefix caching).
            hashes = extra[0] if extra else None
            block_tokens = extra[1] if len(extra) > 1 else 16
            sim.add_pool(
                pool.name,
                arrival_s=arrival,
                prompt_tokens=prompt,
                output_tokens=output,
                block_hashes=hashes,
                block_tokens=block_tokens,
                **common,
            )
        return sim

    # --- the event loop -------------------------------------------------------------------

    def push(self, t: float, fn: Callable[[Any], None], arg: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn, arg))

    def every(self, interval_s: float, fn: Callable[[float], None], *, start: float = 0.0) -> None:
        """Call fn(t) at start, start+interval, ... (e.g. a Prometheus scrape)."""
        if interval_s <= 0:
            msg = f"interval_s must be > 0, got {interval_s}"
            raise ValueError(msg)

        def tick(n: int) -> None:
            fn(self.now)
            self.push(start + (n + 1) * interval_s, tick, n + 1)

        # On the grid start + n*interval, from the first point not in the past.
        first = 0 if self.now <= start else math.ceil((self.now - start) / interval_s)
        self.push(start + first * interval_s, tick, first)

    def advance_to(self, t: float) -> None:
        """Process every event up to and including time t; afterwards `now == t`."""
        if t < self.now:
            msg = f"cannot go back in time: now={self.now}, asked for {t}"
            raise ValueError(msg)
        heap = self._heap
        pop = heapq.heappop
        kicks = self.kicks
        if kicks:
            self._run_kicks()
        n = 0
        while heap and heap[0][0] <= t:
            ev_t, _, fn, arg = pop(heap)
            self.now = ev_t
            fn(arg)
            if kicks:
                self._run_kicks()
            n += 1
        self.events_processed += n
        self.now = t

    def _run_kicks(self) -> None:
        kicks = self.kicks
        while kicks:
            batch = kicks[:]
            kicks.clear()
            for rep in batch:
                rep.kick()

    def run_until_idle(self, *, limit_s: float = 86_400.0, step_s: float = 60.0) -> float:
        """Advance until every pool's arrivals are in and all requests finished (or
        `limit_s` after now); returns the time reached."""
        end = self.now + limit_s
        while self.now < end:
            if all(p.arrivals_done and p.outstanding() == 0 for p in self.pools.values()):
                break
            self.advance_to(min(end, self.now + step_s))
        return self.now

    # --- Deployments ----------------------------------------------------------------------

    def deployment(self, ref: DeploymentRef | tuple[str, str]) -> SimDeployment:
        key = (ref.namespace, ref.name) if not isinstance(ref, tuple) else ref
        try:
            return self._deployments[key]
        except KeyError:
            msg = f"Deployment {key[0]}/{key[1]} is not simulated"
            raise errors.ActuationError(msg) from None

    def deployments(self) -> list[SimDeployment]:
        return list(self._deployments.values())

    def pool(self, name: str) -> SimPool:
        return self.pools[name]

    def scale(
        self, ref: DeploymentRef | tuple[str, str], replicas: int, *, reason: str = ""
    ) -> None:
        """Set a Deployment's spec.replicas at the current time."""
        self.deployment(ref).scale(replicas, self.now, reason=reason)
        if self.kicks:
            self._run_kicks()

    # --- results --------------------------------------------------------------------------

    def gpu_seconds(
        self, *, pool: str | None = None, role: Role | None = None, at: float | None = None
    ) -> float:
        """GPU-seconds held so far: every replica from its request until it stopped."""
        now = self.now if at is None else at
        return sum(
            d.gpu_seconds(now)
            for d in self._deployments.values()
            if (pool is None or d.pool.name == pool) and (role is None or d.role is role)
        )

    def timeline(self, pool: str, role: Role) -> Timeline:
        """Replicas of one role over time (spec, ready, pending, draining), for plotting."""
        return self.pools[pool].deployments[role].timeline_arrays()

    def scale_events(self) -> list[ScaleEvent]:
        return sorted(
            (e for d in self._deployments.values() for e in d.scale_log), key=lambda e: e.t
        )

    def replicas(self, *, live_only: bool = True) -> list[Replica]:
        """Replicas of every Deployment (by default those not stopped), e.g. to serve
        their /metrics."""
        return [
            r
            for d in self._deployments.values()
            for r in d.replicas
            if not live_only or r.status != STOPPED
        ]
