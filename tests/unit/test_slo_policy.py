"""The `slo` policy kind on synthetic time: each sizing rule against a hand computation.

Covers: Erlang C against closed forms; the model miss share ordered in replicas and load; prefill
replicas from the M/G/c tail over the prompt mix (a deterministic mix computed by hand), an
unreachable absolute TTFT sized for load only and
said so; decode from Little's law, the ITL target and the KV quantile (by hand); the prompt
spread estimated from the scatter of window means; burst headroom that waits and then decays;
a 30-minute trend that pre-warms a ramp and ignores 15-second noise; missing or absent data
holds; config errors name the field; the kind is registered and the shipped policy validates.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoscaler import errors
from autoscaler.policy import registry
from autoscaler.policy.base import RoleContext
from autoscaler.policy.load import load_policy_file
from autoscaler.policy.slo import SLOConfig, SLOPolicy
from autoscaler.policy.slo_model import PromptSpread, RateSeries, erlang_c, rate_bins
from autoscaler.profile import builtin
from autoscaler.spec import PolicyRef, RoleSpec
from autoscaler.types import Role, RoleObservation, SignalSample

P8B = builtin("llama-8b-h100")
REPO = Path(__file__).resolve().parents[2]


def spec(role: Role = Role.PREFILL) -> RoleSpec:
    return RoleSpec.model_validate(
        {
            "deployment": {"namespace": "t", "name": f"p-{role.value}"},
            "max_replicas": 100,
            "cold_start_s": 90,
            "policies": [{"kind": "slo", "profile": "llama-8b-h100"}],
        }
    )


def make(role: Role = Role.PREFILL, **config: Any) -> SLOPolicy:
    cfg = SLOConfig.model_validate({"profile": "llama-8b-h100", **config})
    return SLOPolicy(cfg, pool="p", role=role, spec=spec(role))


def tick(
    pol: SLOPolicy, now: float, *, req: float | None, ptok: float | None, gtok: float | None,
    replicas: int = 1, length_cv: float | None = None, waiting: float | None = None,
    running: float | None = None,
) -> tuple[int, str, bool]:  # fmt: skip
    """One tick; `waiting` / `running` are role totals (reported as per-replica means)."""
    sig = {
        "request_rate": SignalSample(req, replicas),
        "prompt_tokens_rate": SignalSample(ptok, replicas),
        "generation_tokens_rate": SignalSample(gtok, replicas),
    }
    if length_cv is not None:
        sig["prompt_length_cv"] = SignalSample(length_cv, replicas)
    if waiting is not None:
        sig["queue_depth"] = SignalSample(waiting / replicas, replicas)
    if running is not None:
        sig["running"] = SignalSample(running / replicas, replicas)
    ctx = RoleContext(
        pool="p",
        role=pol.role,
        spec=spec(pol.role),
        obs=RoleObservation(replicas=replicas, ready=replicas, signals=sig),
        now=now,
    )
    (need,) = pol.needs(ctx)
    return need.want, need.describe(), need.blocks_down


@pytest.mark.parametrize(
    ("c", "a", "expected"),
    [
        pytest.param(1, 0.5, 0.5, id="M/M/1: P(wait) = rho"),
        pytest.param(2, 1.0, 1 / 3, id="M/M/2 at a=1: 1/3"),
        pytest.param(3, 0.0, 0.0, id="no load, no wait"),
    ],
)
def test_erlang_c(c: int, a: float, expected: float) -> None:
    assert erlang_c(c, a) == pytest.approx(expected)


def test_prefill_by_hand_deterministic_mix() -> None:
    """cv 0: every prompt 1,000 tokens. S = idle prefill(1000); the limit max(0.5, 3 S) = 0.5 s
    leaves w = 0.5 - S - transfer; the fewest c > a = lambda S with
    C(c, a) exp(-(c - a) w / S x 2) <= 1 % (cs^2 = 0)."""
    pol = make(prompt_length_cv=0.0, burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=0)
    s = P8B.idle_prefill_s(1000)
    xfer = P8B.kv_bytes_per_token * 1000 / P8B.kv_transfer_bytes_per_s + P8B.kv_transfer_setup_s
    w = 0.5 - s - xfer
    lam = 40.0
    a = lam * s
    c = math.floor(a) + 1
    while erlang_c(c, a) * math.exp(-(c - a) * w / s * 2.0) > 0.01:
        c += 1
    want, why, _ = tick(pol, 15.0, req=lam, ptok=lam * 1000, gtok=lam * 100)
    assert want == c
    assert c >= 2  # the margin is more than the mean load
    assert f"{a:.2f} replicas busy" in why
    assert "cv 0.00: configured" in why


def test_prefill_grows_with_load_and_spread() -> None:
    """More load or a wider prompt spread (more attention work, longer tail) never asks for
    fewer replicas."""
    wants = []
    for cv, lam in ((0.5, 5.0), (0.5, 10.0), (1.5, 10.0), (1.5, 20.0)):
        pol = make(prompt_length_cv=cv, burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=0)
        wants.append(tick(pol, 15.0, req=lam, ptok=lam * 2000, gtok=lam * 100)[0])
    assert wants == sorted(wants)
    assert wants[-1] > wants[0]


def test_unreachable_absolute_ttft_is_sized_for_load_and_said() -> None:
    """An absolute 0.2 s TTFT with 20k-token prompts (idle prefill ~0.8 s): no fleet meets it;
    the policy sizes for the load alone and says the target is unreachable."""
    pol = make(ttft_floor_s=0.2, ttft_slowdown=None, prompt_length_cv=0.0,
               burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=0)  # fmt: skip
    lam = 2.0
    want, why, _ = tick(pol, 15.0, req=lam, ptok=lam * 20000, gtok=lam * 100)
    assert P8B.idle_prefill_s(20000) > 0.2
    assert want == math.ceil(lam * P8B.idle_prefill_s(20000))
    assert "unreachable for 100.0% of prompts" in why


def _decode_by_hand(lam: float, p: float, o: float) -> int:
    per_seq = (P8B.decode_beta_ms_per_seq + P8B.decode_gamma_ms_per_ctx_token * (p + o / 2)) / 1e3
    alpha = P8B.decode_alpha_ms / 1e3
    n = 1
    while True:
        if lam * o * per_seq / n < 1:
            big_n = lam * o * alpha / (1 - lam * o * per_seq / n)
            b = big_n / n
            # Lognormal with the compound-Poisson mean b (p + o) and variance b (p + o)^2.
            s2 = math.log1p(1.0 / b)
            kv = math.exp(math.log(b * (p + o)) - s2 / 2 + 2.3263478740408408 * math.sqrt(s2))
            if alpha + per_seq * b <= 0.05 and kv <= P8B.kv_capacity_tokens:
                return n
        n += 1


@pytest.mark.parametrize(
    ("lam", "p", "o"),
    [
        pytest.param(10.0, 1000.0, 200.0, id="light: one replica"),
        pytest.param(100.0, 1000.0, 200.0, id="10x: ITL-bound"),
        pytest.param(5.0, 30000.0, 300.0, id="long prompts: KV-bound"),
    ],
)
def test_decode_by_hand(lam: float, p: float, o: float) -> None:
    """Decode, cv 0: per-seq cost beta + gamma (p + o/2); with n replicas N = lambda o alpha /
    (1 - lambda o per_seq / n); the fewest n whose step stays <= 50 ms and whose KV at the
    99 % quantile (lognormal of mean B (p + o), variance B (p + o)^2) fits."""
    pol = make(Role.DECODE, prompt_length_cv=0.0, burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=0)
    want, why, _ = tick(pol, 15.0, req=lam, ptok=lam * p, gtok=lam * o)
    assert want == _decode_by_hand(lam, p, o)
    assert "running" in why
    assert "<= 50 ms" in why


def test_spread_estimated_from_window_means() -> None:
    """Windows of N = 600 requests whose mean prompts scatter with sd sigma / sqrt(N): the
    estimate recovers cv = sigma / mean."""
    rng = np.random.default_rng(1)
    sp = PromptSpread(window_s=60.0, memory_s=86400.0)
    mean, sigma, n = 2000.0, 3000.0, 600
    for i in range(400):
        sp.add(60.0 * i, n / 60.0, float(rng.normal(mean, sigma / math.sqrt(n))))
        sp.add(60.0 * i + 15.0, n / 60.0, 1e9)  # overlapping window: ignored
    cv, k = sp.cv()
    assert k == 400
    assert cv == pytest.approx(sigma / mean, rel=0.1)
    assert PromptSpread(window_s=60.0, memory_s=600.0).cv() == (None, 0)


def test_spread_ignores_a_drifting_mix() -> None:
    """The mean prompt drifts from 1,000 to 3,000 tokens over 40 minutes (a change of mix, not
    spread): neighbouring windows differ by their sampling noise only, so the estimate stays
    near the true cv (0.5), where deviations from the overall mean would read about 1.3."""
    rng = np.random.default_rng(2)
    sp = PromptSpread(window_s=60.0, memory_s=86400.0)
    n = 600
    for i in range(40):
        mean = 1000.0 + 2000.0 * i / 39
        sp.add(60.0 * i, n / 60.0, float(rng.normal(mean, 0.5 * mean / math.sqrt(n))))
    cv, k = sp.cv()
    assert k == 40
    assert cv is not None
    assert 0.35 < cv < 0.65


def test_burst_headroom_holds_then_fades() -> None:
    """60-s window rates of 2 req/s with one 15-s slot at 40 req/s (600 requests, 8 % of the
    30 minutes' 7,800: more than the 1 % tail): the policy keeps the burst's replicas while the
    burst is in the 30-min memory, and forgets it after."""
    pol = make(prompt_length_cv=1.0, burst_halflife_s=600, burst_memory_s=1800,
               burst_shape_memory_s=0, trend_window_s=0)  # fmt: skip
    slots = [2.0] * 40 + [40.0] + [2.0] * 200  # req/s per 15-s slot
    wants = []
    for i in range(len(slots)):
        window = sum(slots[max(0, i - 3) : i + 1]) / min(4, i + 1)
        wants.append(tick(pol, 15.0 * (i + 1), req=window, ptok=window * 2000,
                          gtok=window * 50)[0])  # fmt: skip
    quiet, burst, after, late = wants[39], wants[40], wants[50], wants[-1]
    assert burst > quiet
    assert after == burst  # 150 s later: still held
    # Past the memory: forgotten. The short-window estimate one window after the burst takes
    # what left the window at that window's mean (which held the burst), so a trace of it stays
    # in memory a window (4 ticks) longer than the burst itself.
    assert wants[40 + 1800 // 15 + 10] == quiet
    assert late == quiet


def test_trend_prewarms_a_ramp_and_ignores_noise() -> None:
    """A steady 30-minute ramp: the want runs ahead of the current rate (sized for the rate at
    now + cold start + tick). 15-second noise around a flat mean adds no trend."""
    ramp = make(burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=1800)
    flat = make(burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=0)
    t = 0.0
    for _ in range(180):  # 45 min: 1 -> 10 req/s
        t += 15.0
        lam = 1.0 + 9.0 * t / 2700.0
        w_ramp, why, _ = tick(ramp, t, req=lam, ptok=lam * 2000, gtok=lam * 50)
        w_flat, _, _ = tick(flat, t, req=lam, ptok=lam * 2000, gtok=lam * 50)
    assert "by +105 s" in why
    assert w_ramp >= w_flat
    noisy = make(burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=1800)
    calm = make(burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=0)
    t = 0.0
    for i in range(180):
        t += 15.0
        lam = 5.0 * (1.6 if i % 2 else 0.4)
        w_noisy, why_noisy, _ = tick(noisy, t, req=lam, ptok=lam * 2000, gtok=lam * 50)
        w_calm, _, _ = tick(calm, t, req=lam, ptok=lam * 2000, gtok=lam * 50)
    assert w_noisy == w_calm
    assert "trend" not in why_noisy


def test_trend_acts_from_half_an_hour_of_minute_bins() -> None:
    """The forecast the issue asks for: it acts from about 30 minutes of history, not hours. On
    a ramp from a cold start the trend enters the sizing once half the 30-minute window holds
    closed minute means (15 min), and by 30 minutes it asks for more than the current rate
    alone does. Its input is minute means, so one tick's 15-second sample moves it by a quarter
    of a minute's weight at most."""
    ramp = make(burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=1800)
    flat = make(burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=0)
    first = None
    ahead = False
    t = 0.0
    for _ in range(120):  # 30 min: 2 -> 20 req/s
        t += 15.0
        lam = 2.0 + 18.0 * t / 1800.0
        w_ramp, why, _ = tick(ramp, t, req=lam, ptok=lam * 2000, gtok=lam * 50)
        w_flat, _, _ = tick(flat, t, req=lam, ptok=lam * 2000, gtok=lam * 50)
        if first is None and "trend +" in why:
            first = t
        ahead = ahead or w_ramp > w_flat
    assert first is not None
    assert 900.0 <= first <= 1000.0
    assert ahead


def test_missing_or_absent_data_holds() -> None:
    """A missing rate: hold at the current count and block scale-down; no request seen yet:
    hold too (nothing to size from)."""
    pol = make()
    want, why, blocks = tick(pol, 15.0, req=None, ptok=100.0, gtok=1.0, replicas=3)
    assert (want, blocks) == (3, True)
    assert "missing request_rate" in why
    want, why, blocks = tick(pol, 30.0, req=0.0, ptok=0.0, gtok=0.0, replicas=2)
    assert (want, blocks) == (2, True)
    assert "no request seen yet" in why


def test_config_errors_name_the_field() -> None:
    """Bad values and unknown profiles are errors naming the field."""
    with pytest.raises(errors.ConfigError, match=r"\.attainment"):
        registry.validate_ref(
            PolicyRef.model_validate({"kind": "slo", "profile": "x", "attainment": 1.5}),
            where="pools.0.roles.prefill.policies.0",
        )
    with pytest.raises(errors.ConfigError, match=r"slo\.profile: 'nope'"):
        make(profile="nope")


def test_registered_and_shipped_policy_validates() -> None:
    """`slo` is a built-in kind and policies/llama-8b-slo.yaml loads."""
    assert "slo" in registry.available()
    pf = load_policy_file(REPO / "policies" / "llama-8b-slo.yaml")
    roles = pf.pools[0].roles
    assert [p.kind for p in roles[Role.PREFILL].policies] == ["slo"]
    assert [p.kind for p in roles[Role.DECODE].policies] == ["slo"]


def test_short_window_rate_sees_a_burst_the_window_dilutes() -> None:
    """60-s window rates sampled every 15 s: 2 req/s, then 15 s at 20 req/s. The window rate
    moves to 2 + 18 x 15/60 = 6.5; the short-window estimate recovers ~20."""
    series = RateSeries(memory_s=1800, halflife_s=600, trend_s=0, window_s=60, short=True)
    arrivals = [2.0] * 20 + [20.0] + [2.0] * 4  # per 15-s slot, req/s
    shorts = []
    for i in range(len(arrivals)):
        lo = max(0, i - 3)
        window = sum(arrivals[lo : i + 1]) * 15.0 / 60.0 if i >= 3 else arrivals[0]
        shorts.append(series.add(15.0 * (i + 1), window))
    assert shorts[20] == pytest.approx(20.0)
    assert max(shorts[:20]) == pytest.approx(2.0)
    # The burst slot carries 300 of the ~1,000 requests seen: above the 1 % tail, so the
    # request-weighted 99 % quantile is its rate.
    head, age = series.headroom(15.0 * 25, 0.99)
    assert age == pytest.approx(60.0)
    assert head == pytest.approx(20.0)
    # At a 50 % level the typical slot's rate is what counts.
    assert series.headroom(15.0 * 25, 0.5)[0] == pytest.approx(2.0)


def test_burst_replicas_without_remembered_rates_queue_at_the_burst_rate() -> None:
    """With no short-window rates remembered (a restart without backfill) a burst at 60 req/s
    of 1,000-token prompts (cv 0) is sized by the steady model at the burst's rate less its
    Poisson noise over a tick (z_0.99 sqrt(2 x 60 / 15)): the fleet that holds TTFT while the
    burst lasts, not one that drains it within a tick (where requests would wait seconds)."""
    pol = make(prompt_length_cv=0.0)
    noise = 2.3263478740408408 * math.sqrt(2 * 60.0 / 15.0)
    n, why = pol.burst_replicas(0.0, 60.0, 1000.0, 0.0)
    steady, _, _ = pol.prefill_replicas(60.0 - noise, 1000.0, 0.0)
    assert n == steady
    busy = (60.0 - noise) * P8B.idle_prefill_s(1000)
    assert n >= math.ceil(busy)
    assert "burst 60 - Poisson noise 6.58 req/s" in why
    assert pol.burst_replicas(0.0, 0.0, 1000.0, 0.0) == (0, "")


def _remember(pol: SLOPolicy, shorts: list[float]) -> float:
    """Short-window rates (req/s), one a 15-s tick, as the policy's series remembers them;
    returns the time of the last."""
    for i, v in enumerate(shorts):
        pol.rate.samples.append((15.0 * (i + 1), v, v))
    return 15.0 * len(shorts)


@pytest.mark.parametrize(
    ("name", "shorts"),
    [
        # 2 bursts of 15 s at 45 req/s in half an hour of 6 req/s: 3 % of the requests.
        ("rare burst", [6.0] * 60 + [45.0] + [6.0] * 50 + [45.0] + [6.0] * 8),
        # a burst every 2 minutes: 20 % of the requests arrive at 45 req/s.
        ("frequent bursts", ([6.0] * 7 + [45.0]) * 15),
    ],
)
def test_burst_replicas_hold_the_requests_the_recent_rates_carried(
    name: str, shorts: list[float]
) -> None:
    """The headroom is the fewest replicas at which the recent rates' requests, each window at
    the model's miss for its rate, expect at most 1 - attainment late: a rare burst is held to
    its share of the budget, frequent ones to theirs, and never less than the steady sizing."""
    pol = make(prompt_length_cv=0.8)
    now = _remember(pol, shorts)
    head, _ = pol.rate.headroom(now, 0.99)
    steady, _, _ = pol.prefill_replicas(6.0, 2000.0, 0.8)
    n, why = pol.burst_replicas(now, head, 2000.0, 0.8, steady)
    groups = rate_bins(pol.rate.short_rates(now), pol.tick_s)
    total = sum(w for _, w in groups)

    def late(c: int) -> float:
        return sum(w * pol.prefill_miss(c, v, 2000.0, 0.8) for v, w in groups) / total

    assert n >= steady
    assert late(n) <= 0.01
    assert n == steady or late(n - 1) > 0.01
    assert f"late at {n}" in why
    # Sized at the burst's rate alone (the whole budget there), it asks for at least as many.
    at_head, _, _ = pol.prefill_replicas(head, 2000.0, 0.8)
    assert n <= at_head


def test_poisson_noise_alone_adds_no_headroom() -> None:
    """A smooth 20 req/s whose 15-s counts scatter only by their Poisson noise: the headroom
    asks for no more than the steady sizing, where the noise's 99 % quantile sized alone would."""
    pol = make(prompt_length_cv=0.8)
    rng = np.random.default_rng(4)
    now = _remember(pol, list(rng.poisson(20.0 * 15.0, 120) / 15.0))
    head, _ = pol.rate.headroom(now, 0.99)
    steady, _, _ = pol.prefill_replicas(20.0, 2000.0, 0.8)
    n, _ = pol.burst_replicas(now, head, 2000.0, 0.8, steady)
    assert n == steady




def test_trend_adds_nothing_once_a_hump_is_falling() -> None:
    """A busy quarter of an hour, then a fall: the 30-minute line's value at the horizon still
    carries the hump's level, but only a rise adds load, so after the fall the want follows
    the current rate (a hump at 2.5x on the Azure conversation hour held 13.5 req/s of "trend"
    against 1.6 req/s)."""
    trend = make(burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=1800, prompt_length_cv=1.0)
    plain = make(burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=0, prompt_length_cv=1.0)
    t = 0.0
    rates = [5.0] * 40 + [40.0] * 60 + [5.0] * 40  # 10 min, 15 min busy, 10 min
    for lam in rates:
        t += 15.0
        w_trend, why, _ = tick(trend, t, req=lam, ptok=lam * 2000, gtok=lam * 50)
        w_plain, _, _ = tick(plain, t, req=lam, ptok=lam * 2000, gtok=lam * 50)
    assert w_trend == w_plain
    assert "trend" not in why


@pytest.mark.parametrize(
    ("measured", "narrow_or_wide"),
    [(0.3, "narrow"), (2.5, "wide")],
)
def test_a_measured_prompt_mix_is_preferred_to_the_rate_window_estimate(
    measured: float, narrow_or_wide: str
) -> None:
    """With the prompt-length histogram's CV on the signals, the policy sizes on it (pooled
    over the length window) instead of the rate-window estimate or the prior; a wide mix needs
    more replicas than a narrow one at the same load."""
    pol = make()
    t = 0.0
    for _ in range(40):
        t += 15.0
        want, why, _ = tick(pol, t, req=30.0, ptok=30.0 * 2000, gtok=30.0 * 50,
                            length_cv=measured)  # fmt: skip
    assert f"prompt cv {measured:.2f}: measured" in why
    other = make()
    t = 0.0
    for _ in range(40):
        t += 15.0
        want_other, _, _ = tick(other, t, req=30.0, ptok=30.0 * 2000, gtok=30.0 * 50,
                                length_cv=2.5 if narrow_or_wide == "narrow" else 0.3)  # fmt: skip
    if narrow_or_wide == "narrow":
        assert want < want_other
    else:
        assert want > want_other


def test_without_the_histogram_the_rate_window_estimate_is_used() -> None:
    pol = make()
    t = 0.0
    for _ in range(40):
        t += 15.0
        _, why, _ = tick(pol, t, req=30.0, ptok=30.0 * 2000, gtok=30.0 * 50)
    assert "measured" not in why


def _overload(pol: SLOPolicy, *, lam: float, served: float, waiting: bool) -> list[int]:
    """A steady 5 req/s, then from t = 300 s `lam` req/s arrive at one replica that serves
    `served` req/s: the excess queues (waiting grows by lam - served per second)."""
    wants = []
    queue = 0.0
    for k in range(1, 41):
        t = 15.0 * k
        rate = 5.0 if t <= 300 else served
        if t > 300:
            queue += (lam - served) * 15.0
        want, _, _ = tick(pol, t, req=rate, ptok=rate * 2000, gtok=rate * 100,
                          waiting=queue if waiting else None, running=4.0 if waiting else None)
        wants.append(want)
    return wants


def test_sustained_overload_is_sized_on_arrivals_not_completions() -> None:
    """vLLM counts requests as they finish, so an overloaded replica reports its capacity, not
    the load. 64 req/s arrive at one replica serving 18: sized on completions the policy asks
    for what serves 18 req/s with a margin (2 replicas, then one cold start later more); with
    the queue's growth added it asks at once for what 64 req/s need, as if they were served.
    (The load was 60 req/s, which needed 5 replicas while the 8B's prefill attention constant
    was 7e-7; at the 4.26e-7 derived from FlashAttention-3's H100 throughput a 2000-token
    prompt takes 57 ms, not 59, and 60 req/s need 4, as many as the completions path's first
    tick asks; 64 req/s need 5 at either constant.)"""
    cfg = {"prompt_length_cv": 1.0, "burst_memory_s": 0, "burst_shape_memory_s": 0, "trend_window_s": 0}
    on_arrivals = _overload(make(**cfg), lam=64.0, served=18.0, waiting=True)
    on_completions = _overload(make(**cfg), lam=64.0, served=18.0, waiting=False)
    direct = make(**cfg)
    at_load = tick(direct, 15.0, req=64.0, ptok=64.0 * 2000, gtok=64.0 * 100)[0]
    # Before the step both agree; the window needs one tick of backlog to see growth.
    assert on_arrivals[:20] == on_completions[:20]
    assert max(on_completions) < at_load
    # Within the 60-s rate window the growth over the window is the whole excess (46 req/s).
    assert on_arrivals[24] == at_load


def test_draining_queue_and_missing_gauges_keep_the_served_rate() -> None:
    """A queue that shrinks does not lower the load below what was served (the drain needs that
    capacity), and without the gauges the served rate is all there is: both size as the rates
    alone do."""
    cfg = {"prompt_length_cv": 1.0, "burst_memory_s": 0, "burst_shape_memory_s": 0, "trend_window_s": 0}
    plain, draining, gaugeless = make(**cfg), make(**cfg), make(**cfg)
    for k in range(1, 11):
        t = 15.0 * k
        a = tick(plain, t, req=20.0, ptok=40_000.0, gtok=2000.0)
        b = tick(draining, t, req=20.0, ptok=40_000.0, gtok=2000.0, waiting=max(0.0, 200 - 20 * k),
                 running=4.0)
        c = tick(gaugeless, t, req=20.0, ptok=40_000.0, gtok=2000.0, waiting=None, running=4.0)
        assert a[0] == b[0] == c[0]
        assert "backlog" not in b[1]
    assert "backlog" not in c[1]


def test_backlog_growth_is_in_the_reason() -> None:
    pol = make(prompt_length_cv=1.0, burst_memory_s=0, burst_shape_memory_s=0, trend_window_s=0)
    for k, q in enumerate((0.0, 0.0, 0.0, 0.0, 600.0), start=1):
        _, why, _ = tick(pol, 15.0 * k, req=18.0, ptok=36_000.0, gtok=1800.0, waiting=q,
                         running=4.0)
    assert "[arrivals: served 18 + backlog growth 10]" in why


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -5.0])
def test_a_gauge_that_is_not_a_count_leaves_the_served_rate(bad: float) -> None:
    """A waiting gauge that is NaN, infinite or negative (a hostile answer that got past the
    source) is not read as a backlog: the role is sized on what was served."""
    cfg = {"prompt_length_cv": 1.0, "burst_memory_s": 0, "burst_shape_memory_s": 0, "trend_window_s": 0}
    plain, hostile = make(**cfg), make(**cfg)
    for k in range(1, 8):
        t = 15.0 * k
        a = tick(plain, t, req=18.0, ptok=36_000.0, gtok=1800.0)
        b = tick(hostile, t, req=18.0, ptok=36_000.0, gtok=1800.0,
                 waiting=0.0 if k < 5 else bad, running=4.0)
        assert a[0] == b[0]
        assert "backlog" not in b[1]


@pytest.mark.parametrize(
    ("c", "lam", "expected"),
    [
        pytest.param(1, 0.0, 0.0, id="no-load-no-miss"),
        # 1,000-token prompts take ~30 ms: 40 req/s is past one replica's capacity.
        pytest.param(1, 40.0, 1.0, id="saturated-all-miss"),
    ],
)
def test_prefill_miss_at_the_edges(c: int, lam: float, expected: float) -> None:
    assert make().prefill_miss(c, lam, 1000.0, 0.5) == expected


def test_prefill_miss_falls_with_replicas_and_rises_with_load() -> None:
    """The model's miss share, which prefill_replicas searches over, is ordered as a queue's:
    fewer misses with more replicas at the same rate, more with more load on the same
    replicas; the sizing stops at the first replica count within 1 - attainment."""
    pol = make()
    p, cv = 1500.0, 0.8
    rates = [2.0, 8.0, 14.0, 20.0, 26.0]
    for lam in rates:
        by_c = [pol.prefill_miss(c, lam, p, cv) for c in range(1, 6)]
        assert all(b <= a for a, b in itertools.pairwise(by_c)), by_c
    for c in (1, 2, 3):
        by_lam = [pol.prefill_miss(c, lam, p, cv) for lam in rates]
        assert all(b >= a for a, b in itertools.pairwise(by_lam)), by_lam
    n, _, _ = pol.prefill_replicas(20.0, p, cv)
    assert pol.prefill_miss(n, 20.0, p, cv) <= 0.01 < pol.prefill_miss(n - 1, 20.0, p, cv)
