"""Replaying published vLLM measurements on the simulator: the fidelity benchmark's engine.

A published *experiment* is one `vllm bench serve` (or equivalent) run: a fixed fleet of
replicas of one profile, a request rate (Poisson arrivals, or all at once for `inf`) or a
closed loop of a fixed concurrency, a number of prompts and their lengths (fixed, drawn within
a range around them, or a dataset's length distribution). Each experiment
carries one or more published *points* (a metric and its value). `run_experiment` simulates the
experiment and returns the same metrics, computed the way the benchmark client computes them:

* TTFT: first token minus arrival, per request; mean and median over requests.
* TPOT: (end - first token) / (output - 1) per request with output > 1; mean and median.
* E2E: end minus arrival per request; mean and median.
* request_throughput: requests / (last end - first arrival); output_throughput likewise with
  generated tokens.

Median ITL (the median over single inter-token gaps) is not modelled: the simulator's decode
segments give each request's mean gap, not each gap, and vLLM 0.6's multi-step scheduling emits
tokens in bursts the simulator does not model. Points of that metric are refused at load time.

The data file format is described in benchmarks/data/README.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from autoscaler import errors
from autoscaler.profile import BUILTIN_PROFILES, Profile, resolve_profile
from autoscaler.sim.engine import ROUTING_POLICIES, RequestResults, Simulation
from autoscaler.types import Role
from autoscaler.yamlsafe import format_validation_error, load_yaml, read_text

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

METRICS = (
    "mean_ttft_ms",
    "median_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "mean_e2e_ms",
    "median_e2e_ms",
    "request_throughput",
    "output_throughput",
)
SPLITS = ("fit", "held-out")


@dataclass(frozen=True, slots=True)
class Dataset:
    """Length distribution of a published dataset: lognormal with the published means.

    Only the means are published with the points; `sigma` (the log-space spread) is this
    benchmark's assumption and is stated in the data file next to it."""

    name: str
    input_mean: float
    output_mean: float
    sigma: float
    input_max: int
    total_max: int

    def sample(self, n: int, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
        mu_adj = -0.5 * self.sigma * self.sigma  # lognormal mean = exp(mu + sigma²/2)
        inp = np.exp(rng.normal(math.log(self.input_mean) + mu_adj, self.sigma, n))
        out = np.exp(rng.normal(math.log(self.output_mean) + mu_adj, self.sigma, n))
        inp_i = np.clip(np.rint(inp), 4, self.input_max).astype(np.int64)
        out_i = np.clip(np.rint(out), 4, None).astype(np.int64)
        out_i = np.minimum(out_i, np.maximum(self.total_max - inp_i, 4))
        return inp_i, out_i


@dataclass(frozen=True, slots=True)
class SharedPrefix:
    """inference-perf's `shared_prefix` data: `groups` system prompts of `system_len` tokens,
    each followed by `prompts_per_group` different questions; requests draw from these
    groups x prompts_per_group prompts uniformly at random (so prompts repeat)."""

    groups: int
    prompts_per_group: int
    system_len: int

    def hashes(
        self, n: int, prompt_len: int, rng: np.random.Generator, block: int = 16
    ) -> list[list[int]]:
        """Block hashes per request: a block inside the system prompt is shared by its group;
        any later block belongs to its prompt alone (hashes chain, as vLLM's do)."""
        pick = rng.integers(0, self.groups * self.prompts_per_group, n)
        shared = self.system_len // block
        out: list[list[int]] = []
        for k in pick.tolist():
            g = k // self.prompts_per_group
            out.append(
                [
                    hash((g, b)) if b < shared else hash((g, k, b))
                    for b in range(prompt_len // block)
                ]
            )
        return out


@dataclass(frozen=True, slots=True)
class Source:
    """Where published points come from."""

    key: str
    url: str
    title: str
    kind: str  # vendor blog, benchmark repository, paper, issue/PR


@dataclass(frozen=True, slots=True)
class Experiment:
    """One published run and the metrics it reported."""

    id: str
    source: str
    profile: str
    model: str
    gpu: str
    tp: int
    vllm_version: str
    rate: float
    num_prompts: int
    input_len: int | None
    output_len: int | None
    dataset: str | None
    replicas: int
    split: str
    points: dict[str, float]
    note: str = ""
    seed: int = 0
    arrivals: str = "poisson"
    """poisson, or constant (evenly spaced, as inference-perf's `constant` load)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Profile fields the experiment's server ran with (e.g. max_num_batched_tokens)."""
    shared_prefix: SharedPrefix | None = None
    """The prompts repeat (a fixed set, with per-group system prompts): prefix caching."""
    stages: tuple[tuple[float, float], ...] = ()
    """(rate, duration_s) load stages run back to back; the points summarise all of them.
    Empty: one stage of `num_prompts` requests at `rate`."""
    burstiness: float = 1.0
    """vLLM's benchmark `--burstiness`: gamma-distributed gaps with this shape and the rate's
    mean (1 is Poisson; larger is more even). Only with `poisson` arrivals."""
    routing: str = "least-loaded"
    """How requests chose a replica (engine ROUTING_POLICIES): `random` for a plain Kubernetes
    Service in front of several replicas."""
    concurrency: int = 0
    """0: open loop, arrivals at `rate`. n > 0: a closed loop at rate `inf`, as `vllm bench serve
    --max-concurrency n` runs it: n requests in flight, the next sent as soon as one finishes."""
    range_ratio: float = 0.0
    """With fixed `input_len`/`output_len`: each request's lengths drawn uniformly from the
    integers within +-range_ratio of them (vLLM's random dataset, `--random-range-ratio`)."""
    vantage: str = "client"
    """Where latencies were measured: `client` (a benchmark client: HTTP, tokenization and
    streaming included) or `server` (vLLM's own histograms, which start at the engine's
    arrival: the profile's `frontend_ms` is not in them)."""


@dataclass(frozen=True, slots=True)
class DecodeFit:
    """A published straight line through the median inter-token latency of one request alone
    on an idle server against its input length, `ITL = slope x input_len + intercept` (a
    concurrency-1 sweep). Its two numbers are what the source printed; the per-length ITLs
    behind them are not, so the check compares lines, not points."""

    id: str
    source: str
    profile: str
    model: str
    gpu: str
    tp: int
    vllm_version: str
    input_min: int
    input_max: int
    """The swept input lengths' range, as the source states it."""
    output_len: int
    slope_ms_per_token: float
    intercept_ms: float
    split: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class DataFile:
    sources: dict[str, Source]
    datasets: dict[str, Dataset]
    experiments: list[Experiment] = field(default_factory=list)
    profiles: dict[str, Profile] = field(default_factory=dict)
    """Profiles defined in the data file (a built-in `base` plus derived fields)."""
    profile_fits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per data-file profile, the experiments whose points set its constants (`fit_experiments`):
    when another profile's runs are replayed with it, those are its fit points, not held out."""
    decode_fits: list[DecodeFit] = field(default_factory=list)
    """Published single-request ITL lines (`decode_fits`), checked by their slope and intercept."""

    def profile_for(self, exp: Experiment) -> Profile:
        """The experiment's profile with the server settings it ran with."""
        base = self.profiles.get(exp.profile) or resolve_profile(exp.profile)
        if not exp.overrides:
            return base
        return Profile.model_validate({**base.model_dump(), **exp.overrides})


def _need(d: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise errors.ConfigError([f"{where}: {key}: missing"])
    v = d[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise errors.ConfigError([f"{where}: {key}: expected {kind}, got {v!r}"])
    return v


def load_data(path: str | Path) -> DataFile:
    """Read and validate a published-points file; errors name the file, entry and field."""
    p = Path(path)
    text = read_text(p)
    data = load_yaml(text, source=str(p))
    if not isinstance(data, dict):
        raise errors.ConfigError([f"{p}: (top level): expected a mapping"])
    sources: dict[str, Source] = {}
    for key, s in (data.get("sources") or {}).items():
        w = f"{p}: sources.{key}"
        sources[key] = Source(
            key=key,
            url=_need(s, "url", w, str),
            title=_need(s, "title", w, str),
            kind=_need(s, "kind", w, str),
        )
    datasets: dict[str, Dataset] = {}
    for key, d in (data.get("datasets") or {}).items():
        w = f"{p}: datasets.{key}"
        datasets[key] = Dataset(
            name=key,
            input_mean=float(_need(d, "input_mean", w, (int, float))),
            output_mean=float(_need(d, "output_mean", w, (int, float))),
            sigma=float(_need(d, "sigma", w, (int, float))),
            input_max=int(_need(d, "input_max", w, int)),
            total_max=int(_need(d, "total_max", w, int)),
        )
    profiles: dict[str, Profile] = {}
    profile_fits: dict[str, tuple[str, ...]] = {}
    for key, pr in (data.get("profiles") or {}).items():
        w = f"{p}: profiles.{key}"
        if not isinstance(pr, dict):
            raise errors.ConfigError([f"{w}: expected a mapping"])
        fields = {k: v for k, v in pr.items() if k not in ("base", "derivation", "fit_experiments")}
        fit_ids = pr.get("fit_experiments") or []
        if not isinstance(fit_ids, list) or not all(isinstance(x, str) for x in fit_ids):
            raise errors.ConfigError(
                [f"{w}: fit_experiments: expected a list of experiment ids, got {fit_ids!r}"]
            )
        profile_fits[key] = tuple(fit_ids)
        base_name = _need(pr, "base", w, str)
        # A built-in, or a profile defined above it in the same file (a refinement of it).
        base = profiles.get(base_name) or resolve_profile(base_name)
        try:
            profiles[key] = Profile.model_validate({**base.model_dump(), **fields, "name": key})
        except ValidationError as exc:
            raise errors.ConfigError(format_validation_error(w, exc)) from exc
    exps: list[Experiment] = []
    seen: set[str] = set()
    for i, e in enumerate(data.get("experiments") or []):
        w = f"{p}: experiments[{i}]"
        eid = _need(e, "id", w, str)
        w = f"{p}: experiments[{i}] ({eid})"
        if eid in seen:
            raise errors.ConfigError([f"{w}: id: duplicate"])
        seen.add(eid)
        src = _need(e, "source", w, str)
        if src not in sources:
            raise errors.ConfigError([f"{w}: source: unknown source {src!r}"])
        split = _need(e, "split", w, str)
        if split not in SPLITS:
            raise errors.ConfigError([f"{w}: split: expected one of {SPLITS}, got {split!r}"])
        rate_raw = _need(e, "rate", w, (int, float, str))
        if isinstance(rate_raw, str):
            if rate_raw != "inf":
                raise errors.ConfigError(
                    [f"{w}: rate: expected a number or 'inf', got {rate_raw!r}"]
                )
            rate = math.inf
        else:
            rate = float(rate_raw)
            if rate <= 0:
                raise errors.ConfigError([f"{w}: rate: must be > 0, got {rate}"])
        ds = e.get("dataset")
        if ds is not None and ds not in datasets:
            raise errors.ConfigError([f"{w}: dataset: unknown dataset {ds!r}"])
        inp, out = e.get("input_len"), e.get("output_len")
        if ds is None and not (isinstance(inp, int) and isinstance(out, int)):
            raise errors.ConfigError([f"{w}: input_len/output_len: needed without a dataset"])
        arrivals = str(e.get("arrivals", "poisson"))
        if arrivals not in ("poisson", "constant"):
            raise errors.ConfigError(
                [f"{w}: arrivals: expected poisson or constant, got {arrivals!r}"]
            )
        burst_raw = e.get("burstiness", 1.0)
        if not isinstance(burst_raw, (int, float)) or isinstance(burst_raw, bool) or burst_raw <= 0:
            raise errors.ConfigError([f"{w}: burstiness: expected a number > 0, got {burst_raw!r}"])
        if arrivals == "constant" and burst_raw != 1:
            raise errors.ConfigError([f"{w}: burstiness: only with poisson arrivals"])
        routing = str(e.get("routing", "least-loaded"))
        if routing not in ROUTING_POLICIES:
            raise errors.ConfigError(
                [f"{w}: routing: expected one of {ROUTING_POLICIES}, got {routing!r}"]
            )
        conc = e.get("concurrency", 0)
        if not isinstance(conc, int) or isinstance(conc, bool) or conc < 0:
            raise errors.ConfigError([f"{w}: concurrency: expected an integer >= 1, got {conc!r}"])
        if conc and not math.isinf(rate):
            raise errors.ConfigError(
                [f"{w}: concurrency: a closed loop sends at rate 'inf', got rate {rate:g}"]
            )
        ratio = e.get("range_ratio", 0.0)
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 <= ratio < 1:
            raise errors.ConfigError([f"{w}: range_ratio: expected 0 <= ratio < 1, got {ratio!r}"])
        if ratio and ds is not None:
            raise errors.ConfigError([f"{w}: range_ratio: only with input_len/output_len"])
        pts = _need(e, "points", w, dict)
        points: dict[str, float] = {}
        for m, v in pts.items():
            if m not in METRICS:
                raise errors.ConfigError([f"{w}: points.{m}: unknown metric; known: {METRICS}"])
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise errors.ConfigError([f"{w}: points.{m}: expected a number > 0, got {v!r}"])
            points[m] = float(v)
        stages_raw = e.get("stages") or []
        stages: list[tuple[float, float]] = []
        for j, st in enumerate(stages_raw):
            if (
                not isinstance(st, list)
                or len(st) != 2
                or not all(isinstance(x, (int, float)) and x > 0 for x in st)
            ):
                raise errors.ConfigError(
                    [f"{w}: stages[{j}]: expected [rate, duration_s] > 0, got {st!r}"]
                )
            stages.append((float(st[0]), float(st[1])))
        sp_raw = e.get("shared_prefix")
        sp = None
        if sp_raw is not None:
            ws = f"{w}: shared_prefix"
            sp = SharedPrefix(
                groups=int(_need(sp_raw, "groups", ws, int)),
                prompts_per_group=int(_need(sp_raw, "prompts_per_group", ws, int)),
                system_len=int(_need(sp_raw, "system_len", ws, int)),
            )
        exps.append(
            Experiment(
                id=eid,
                source=src,
                profile=_need(e, "profile", w, str),
                model=_need(e, "model", w, str),
                gpu=_need(e, "gpu", w, str),
                tp=int(_need(e, "tp", w, int)),
                vllm_version=str(_need(e, "vllm_version", w, (str, int, float))),
                rate=rate,
                num_prompts=int(_need(e, "num_prompts", w, int)),
                input_len=inp if isinstance(inp, int) else None,
                output_len=out if isinstance(out, int) else None,
                dataset=ds,
                replicas=int(e.get("replicas", 1)),
                split=split,
                points=points,
                note=str(e.get("note", "")),
                seed=int(e.get("seed", 0)),
                arrivals=arrivals,
                overrides=dict(e.get("overrides") or {}),
                shared_prefix=sp,
                stages=tuple(stages),
                burstiness=float(burst_raw),
                routing=routing,
                concurrency=conc,
                range_ratio=float(ratio),
            )
        )
        prof = exps[-1].profile
        if prof not in profiles and prof not in BUILTIN_PROFILES:
            known = ", ".join([*sorted(BUILTIN_PROFILES), *sorted(profiles)])
            raise errors.ConfigError([f"{w}: profile: unknown profile {prof!r}; known: {known}"])
    for key, fit_ids in profile_fits.items():
        unknown = sorted(set(fit_ids) - seen)
        if unknown:
            raise errors.ConfigError(
                [f"{p}: profiles.{key}: fit_experiments: unknown experiment ids {unknown}"]
            )
    fits = [
        _decode_fit(f"{p}: decode_fits[{i}]", f, sources, profiles)
        for i, f in enumerate(data.get("decode_fits") or [])
    ]
    return DataFile(
        sources=sources,
        datasets=datasets,
        experiments=exps,
        profiles=profiles,
        profile_fits=profile_fits,
        decode_fits=fits,
    )


def _decode_fit(
    where: str, f: Any, sources: dict[str, Source], profiles: dict[str, Profile]
) -> DecodeFit:
    if not isinstance(f, dict):
        raise errors.ConfigError([f"{where}: expected a mapping"])
    w = f"{where} ({_need(f, 'id', where, str)})"
    src = _need(f, "source", w, str)
    if src not in sources:
        raise errors.ConfigError([f"{w}: source: unknown source {src!r}"])
    split = _need(f, "split", w, str)
    if split not in SPLITS:
        raise errors.ConfigError([f"{w}: split: expected one of {SPLITS}, got {split!r}"])
    prof = _need(f, "profile", w, str)
    if prof not in profiles and prof not in BUILTIN_PROFILES:
        known = ", ".join([*sorted(BUILTIN_PROFILES), *sorted(profiles)])
        raise errors.ConfigError([f"{w}: profile: unknown profile {prof!r}; known: {known}"])
    lo, hi = _need(f, "input_min", w, int), _need(f, "input_max", w, int)
    if not 0 < lo < hi:
        raise errors.ConfigError([f"{w}: input_min/input_max: need 0 < min < max, got {lo}, {hi}"])
    out = _need(f, "output_len", w, int)
    if out < 2:
        raise errors.ConfigError([f"{w}: output_len: needs 2 or more tokens, got {out}"])
    line: dict[str, float] = {}
    for key in ("slope_ms_per_token", "intercept_ms"):
        v = _need(f, key, w, (int, float))
        if v <= 0:
            raise errors.ConfigError([f"{w}: {key}: expected a number > 0, got {v!r}"])
        line[key] = float(v)
    return DecodeFit(
        id=str(f["id"]),
        source=src,
        profile=prof,
        model=_need(f, "model", w, str),
        gpu=_need(f, "gpu", w, str),
        tp=int(_need(f, "tp", w, int)),
        vllm_version=str(_need(f, "vllm_version", w, (str, int, float))),
        input_min=lo,
        input_max=hi,
        output_len=out,
        slope_ms_per_token=line["slope_ms_per_token"],
        intercept_ms=line["intercept_ms"],
        split=split,
        note=str(f.get("note", "")),
    )


def workload(
    exp: Experiment, datasets: dict[str, Dataset], *, seed: int | None = None
) -> tuple[FloatArray, IntArray, IntArray]:
    """Arrivals and lengths of an experiment (seeded: the same replay every run)."""
    rng = np.random.default_rng(exp.seed if seed is None else seed)
    n = exp.num_prompts
    if exp.stages:
        n = sum(round(r * d) for r, d in exp.stages)
    if exp.dataset is not None:
        prompt, output = datasets[exp.dataset].sample(n, rng)
    else:
        assert exp.input_len is not None
        assert exp.output_len is not None
        prompt = _lengths(rng, exp.input_len, exp.range_ratio, n)
        output = _lengths(rng, exp.output_len, exp.range_ratio, n)
    if exp.stages:
        parts, start = [], 0.0
        for r, d in exp.stages:
            k = round(r * d)
            if exp.arrivals == "constant":
                parts.append(start + np.arange(k, dtype=np.float64) / r)
            else:
                parts.append(start + np.cumsum(_gaps(rng, r, exp.burstiness, k)))
            start += d
        arrival = np.concatenate(parts)
    elif math.isinf(exp.rate):
        arrival = np.zeros(n)
    elif exp.arrivals == "constant":
        arrival = np.arange(n, dtype=np.float64) / exp.rate
    else:
        arrival = np.cumsum(_gaps(rng, exp.rate, exp.burstiness, n))
    return arrival, prompt, output


def _lengths(rng: np.random.Generator, length: int, ratio: float, n: int) -> IntArray:
    """`n` copies of `length`, or with `ratio` > 0 integers drawn uniformly from
    [length x (1 - ratio), length x (1 + ratio)], as vLLM's random dataset draws them."""
    if ratio == 0:
        return np.full(n, length, dtype=np.int64)
    lo, hi = int(length * (1 - ratio)), int(length * (1 + ratio))
    return rng.integers(max(lo, 1), hi + 1, n).astype(np.int64)


def _gaps(rng: np.random.Generator, rate: float, burstiness: float, n: int) -> FloatArray:
    """Inter-arrival gaps as vLLM's benchmark client draws them: exponential at burstiness 1
    (Poisson), else gamma with shape `burstiness` and mean 1/rate."""
    if burstiness == 1.0:
        return rng.exponential(1.0 / rate, n)
    return rng.gamma(burstiness, 1.0 / (rate * burstiness), n)


def simulate(
    profile: Profile,
    arrival: FloatArray,
    prompt: IntArray,
    output: IntArray,
    *,
    replicas: int = 1,
    block_hashes: list[list[int]] | None = None,
    routing: str = "least-loaded",
) -> dict[str, float]:
    """Run a fixed aggregated fleet on the requests and measure them as the client would."""
    res = _run(
        profile,
        arrival,
        prompt,
        output,
        replicas=replicas,
        block_hashes=block_hashes,
        routing=routing,
    )
    ttft = res.ttft_s * 1000.0
    e2e = (res.finish_s - res.arrival_s) * 1000.0
    tpot = res.mean_itl_s * 1000.0
    tpot = tpot[~np.isnan(tpot)]
    span = float(np.nanmax(res.finish_s) - np.min(res.arrival_s))
    # Token-weighted mean ITL, as vLLM's inter-token histogram observes it (one observation per
    # gap): total decode time over total gaps.
    gaps = (res.output_tokens - 1).astype(np.float64)
    done = (gaps > 0) & ~np.isnan(res.finish_s) & ~np.isnan(res.first_token_s)
    decode_ms = float(np.sum((res.finish_s - res.first_token_s)[done])) * 1000.0
    n_gaps = float(np.sum(gaps[done]))
    return {
        "mean_itl_ms": decode_ms / n_gaps if n_gaps > 0 else math.nan,
        "mean_ttft_ms": float(np.nanmean(ttft)),
        "median_ttft_ms": float(np.nanmedian(ttft)),
        "mean_tpot_ms": float(np.mean(tpot)) if tpot.size else math.nan,
        "median_tpot_ms": float(np.median(tpot)) if tpot.size else math.nan,
        "mean_e2e_ms": float(np.nanmean(e2e)),
        "median_e2e_ms": float(np.nanmedian(e2e)),
        "request_throughput": len(arrival) / span,
        "output_throughput": float(np.sum(output)) / span,
    }


def _run(
    profile: Profile,
    arrival: FloatArray,
    prompt: IntArray,
    output: IntArray,
    *,
    replicas: int,
    block_hashes: list[list[int]] | None,
    routing: str,
) -> RequestResults:
    sim = Simulation()
    sim.add_pool(
        "bench",
        profile=profile,
        deployments={Role.AGGREGATED: ("bench", "vllm")},
        arrival_s=arrival,
        prompt_tokens=prompt,
        output_tokens=output,
        initial_replicas={Role.AGGREGATED: replicas},
        block_hashes=block_hashes,
        routing=routing,
    )
    sim.run_until_idle(limit_s=7 * 86_400.0, step_s=600.0)
    return sim.pool("bench").results()


def closed_loop_arrivals(
    profile: Profile,
    prompt: IntArray,
    output: IntArray,
    concurrency: int,
    *,
    replicas: int = 1,
    block_hashes: list[list[int]] | None = None,
    routing: str = "least-loaded",
) -> FloatArray:
    """Send times of a closed-loop client keeping `concurrency` requests in flight: the first
    `concurrency` at 0, request k when the (k - concurrency + 1)-th completion comes. Built
    causally: the completions before request k's send time depend only on the k requests sent
    before it, so simulating those k alone gives that time exactly (n - concurrency runs of at
    most n requests each)."""
    n = len(prompt)
    arrival = np.zeros(n)
    for k in range(concurrency, n):
        hashes = block_hashes[:k] if block_hashes is not None else None
        res = _run(
            profile,
            arrival[:k],
            prompt[:k],
            output[:k],
            replicas=replicas,
            block_hashes=hashes,
            routing=routing,
        )
        arrival[k] = np.sort(res.finish_s)[k - concurrency]
    return arrival


def run_experiment(
    exp: Experiment, data: DataFile, profile: Profile | None = None
) -> dict[str, float]:
    """Simulated values of every metric for a published experiment (its own profile with its
    server settings unless `profile` is given)."""
    prof = profile if profile is not None else data.profile_for(exp)
    arrival, prompt, output = workload(exp, data.datasets)
    hashes = None
    if exp.shared_prefix is not None:
        assert exp.input_len is not None
        rng = np.random.default_rng(exp.seed + 1)
        hashes = exp.shared_prefix.hashes(len(arrival), exp.input_len, rng)
    if exp.concurrency:
        arrival = closed_loop_arrivals(
            prof,
            prompt,
            output,
            exp.concurrency,
            replicas=exp.replicas,
            block_hashes=hashes,
            routing=exp.routing,
        )
    out = simulate(
        prof,
        arrival,
        prompt,
        output,
        replicas=exp.replicas,
        block_hashes=hashes,
        routing=exp.routing,
    )
    if exp.vantage == "server":
        # The front-end delay precedes the engine's arrival stamp (engine: frontend_ms delays
        # each request's entry to the scheduler), so vLLM's TTFT and e2e histograms lack it.
        for key in ("mean_ttft_ms", "median_ttft_ms", "mean_e2e_ms", "median_e2e_ms"):
            out[key] -= prof.frontend_ms
    return out


def saturation_knee(
    profile: Profile,
    dataset: Dataset,
    *,
    rates: list[float],
    duration_s: float = 300.0,
    ttft_s: float = 1.0,
    seed: int = 0,
) -> float:
    """The request rate at which mean TTFT passes `ttft_s` on one replica fed Poisson arrivals
    for `duration_s` (linear interpolation between the bracketing rates of `rates`; nan if
    never, or already at the first rate). A finite run matters: below the knee TTFT stays near
    the idle prefill whatever the length; above it the queue, and TTFT, grow with the run."""
    prev_r, prev_t = math.nan, math.nan
    for r in sorted(rates):
        rng = np.random.default_rng(seed)
        n = max(1, round(r * duration_s))
        prompt, output = dataset.sample(n, rng)
        arrival = np.cumsum(rng.exponential(1.0 / r, n))
        t = simulate(profile, arrival, prompt, output)["mean_ttft_ms"] / 1000.0
        if t > ttft_s:
            if math.isnan(prev_r):
                return math.nan
            return prev_r + (r - prev_r) * (ttft_s - prev_t) / (t - prev_t)
        prev_r, prev_t = r, t
    return math.nan


def long_prompt_ttft_s(profile: Profile, prompt_tokens: int) -> float:
    """TTFT of one prompt alone on an idle replica, simulated (chunked prefill included)."""
    arrival = np.zeros(1)
    m = simulate(
        profile,
        arrival,
        np.array([prompt_tokens], dtype=np.int64),
        np.array([2], dtype=np.int64),
    )
    return m["mean_ttft_ms"] / 1000.0


def single_request_itl_fit(
    profile: Profile, input_lens: list[int], output_len: int
) -> tuple[float, float]:
    """Slope (ms per input token) and intercept (ms) of the least-squares line through the
    simulated ITL of one request alone on an idle replica at each input length: what a
    concurrency-1 `vllm bench serve` sweep fits. Each request's ITL is its mean gap after the
    first token, so the line's intercept holds the decode step at the prompt plus half the
    output of context."""
    itl = [
        simulate(
            profile,
            np.zeros(1),
            np.array([n], dtype=np.int64),
            np.array([output_len], dtype=np.int64),
        )["mean_tpot_ms"]
        for n in input_lens
    ]
    slope, intercept = np.polyfit(np.asarray(input_lens, dtype=np.float64), np.asarray(itl), 1)
    return float(slope), float(intercept)
