"""Latency targets a profile cannot meet: the warnings `pd-autoscaler validate` prints.

An absolute TTFT target T cannot be met by a prompt whose prefill alone, on an idle replica of
the profile (plus its KV transfer on a prefill replica), takes longer than T: no number of
replicas helps, so such requests count as misses, and a TTFT guard on that quantile asks for
more replicas every tick until the role sits at max_replicas. An ITL target at or under the
profile's decode step floor (`decode_alpha_ms`, a step of one sequence) cannot be met at any
batch. Neither is a configuration error (the prompt mix may never hold such prompts), so
they are warnings that name the field, the profile and the prompt length where the target
stops being reachable.

The profile of a role is the one its `slo` policy names, else the one given to `validate
--profile`; without either, nothing is checked.

A `batched_tokens` target on a prefill or aggregated role is warned about with or without a
profile: vLLM V1 observes its iteration-token histogram once per engine step that emitted output
and counts, for each request whose prefill completed in that step, its whole prompt (steps that
only ran a chunk are not observed at all). So a single prompt longer than target x
`max_num_batched_tokens` reads above the target on an idle replica, and a prompt mix with such
prompts keeps asking for more replicas (up to max_replicas) at any load: the signal measures the
prompt-length mix, not how busy the replica is. A decode role's steps hold one token per running
sequence, where the signal stays a batch-size measure, so decode is not warned about.

Forecast settings that are valid but probably not meant (bins shorter than the models' minimum,
which are widened) are warned about here too, for `forecast` policies and an `slo` policy's
`forecast`, with or without a profile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoscaler import errors
from autoscaler.types import Role, SignalName

if TYPE_CHECKING:
    from autoscaler.profile import Profile
    from autoscaler.spec import PolicyFile, RoleSpec


def longest_prompt_within(profile: Profile, limit_s: float, *, role: Role) -> int:
    """The longest prompt (tokens) whose idle prefill, plus its KV transfer on a prefill
    replica, takes at most `limit_s` on `profile`; 0 if not even one token does. Capped at the
    longest prompt the replica's KV cache holds."""
    top = profile.kv_capacity_tokens - 1

    def time_s(p: int) -> float:
        t = profile.idle_prefill_s(p)
        if role is Role.PREFILL:
            t += profile.kv_transfer_s(p)
        return t

    if time_s(1) > limit_s:
        return 0
    if time_s(top) <= limit_s:
        return top
    lo, hi = 1, top  # time_s(lo) <= limit < time_s(hi): idle prefill grows with the prompt
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if time_s(mid) <= limit_s:
            lo = mid
        else:
            hi = mid
    return lo


def _ttft(profile: Profile, where: str, what: str, limit_s: float, role: Role) -> list[str]:
    n = longest_prompt_within(profile, limit_s, role=role)
    if n >= profile.kv_capacity_tokens - 1:
        return []
    over = profile.idle_prefill_s(n + 1) + (
        profile.kv_transfer_s(n + 1) if role is Role.PREFILL else 0.0
    )
    return [
        f"{where}: {what} {limit_s:g} s is unreachable on profile {profile.name} for prompts "
        f"over {n:,} tokens (their idle prefill{' and KV transfer' if role is Role.PREFILL else ''}"
        f" alone takes {over:.4g} s): such requests miss on any fleet, and a guard on them pins "
        "max_replicas; a relative TTFT (ttft_relative, or the slo kind's ttft_slowdown) "
        "measures each prompt against its own prefill time"
    ]


def _itl(profile: Profile, where: str, what: str, limit_s: float) -> list[str]:
    floor_s = profile.decode_alpha_ms / 1000.0
    if limit_s > floor_s:
        return []
    return [
        f"{where}: {what} {limit_s:g} s is unreachable on profile {profile.name}: a decode step "
        f"of a single sequence takes {floor_s:.3g} s"
    ]


def _batched_tokens(where: str, target: float, rs: RoleSpec, role: Role) -> list[str]:
    over = int(target * rs.max_num_batched_tokens)
    return [
        f"{where}: batched_tokens target {target:g} on a {role.value} role: vLLM V1 counts a "
        "prompt's whole length in the engine step where its prefill completes, so one prompt of "
        f"over {over:,} tokens (target x max_num_batched_tokens {rs.max_num_batched_tokens}) "
        "reads above the target on an idle replica: a prompt mix that holds such prompts asks for "
        "more replicas, up to max_replicas, at any load; scale prefill work on "
        "prompt_tokens_rate (or the slo kind)"
    ]


def _role_profile(rs: RoleSpec, default: Profile | None) -> Profile | None:
    from autoscaler.policy.slo import _load_profile  # noqa: PLC0415 - profile loads lazily
    from autoscaler.profile import Profile  # noqa: PLC0415

    for ref in rs.policies:
        if ref.kind == "slo":
            name = (ref.model_extra or {}).get("profile")
            if isinstance(name, str):
                try:
                    prof = _load_profile(name)
                except errors.ConfigError:
                    return default
                assert isinstance(prof, Profile)
                return prof
    return default


def unreachable_targets(policy: PolicyFile, profile: Profile | None = None) -> list[str]:
    """One warning per absolute latency target the role's profile cannot meet and per
    batched_tokens target on a prefill/aggregated role (see the module docstring), each naming
    its field as `pools.N.roles.ROLE...`."""
    from autoscaler.policy.forecast import ForecastConfig  # noqa: PLC0415
    from autoscaler.policy.slo import SLOConfig  # noqa: PLC0415

    out: list[str] = []
    for i, pool in enumerate(policy.pools):
        for role, rs in pool.roles.items():
            base = f"pools.{i}.roles.{role.value}"
            for j, ref in enumerate(rs.policies):
                fc = None
                if ref.kind == "forecast":
                    fc = ForecastConfig.model_validate(ref.model_extra or {})
                elif ref.kind == "slo":
                    fc = SLOConfig.model_validate(ref.model_extra or {}).forecast
                if fc is not None:
                    out += [f"{base}.policies.{j}: {w}" for w in fc.warnings()]
            if role is not Role.DECODE:
                for j, sig in enumerate(rs.signals):
                    if sig.signal is SignalName.BATCHED_TOKENS:
                        out += _batched_tokens(f"{base}.signals.{j}", sig.target, rs, role)
            prof = _role_profile(rs, profile)
            if prof is None:
                continue
            for j, sig in enumerate(rs.signals):
                where = f"{base}.signals.{j}"
                if sig.signal is SignalName.TTFT:
                    out += _ttft(prof, where, "ttft target", sig.target, role)
                elif sig.signal is SignalName.ITL:
                    out += _itl(prof, where, "itl target", sig.target)
            for j, ref in enumerate(rs.policies):
                if ref.kind != "slo":
                    continue
                # The loader validated it already: this only fills in the defaults.
                cfg = SLOConfig.model_validate(ref.model_extra or {})
                where = f"{base}.policies.{j}"
                if cfg.ttft_slowdown is None:
                    what = "absolute TTFT (ttft_slowdown: null) ttft_floor_s"
                    out += _ttft(prof, where, what, cfg.ttft_floor_s, role)
                if role is not Role.PREFILL:
                    out += _itl(prof, where, "itl_mean_s", cfg.itl_mean_s)
    return out
