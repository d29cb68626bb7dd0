"""Simulator profiles: the performance constants of one vLLM replica, in one place.

The model and the source of every constant are described in docs/simulator.md (its "Constants"
table cites the papers, repositories and measurements behind each number); the comment next to
each default here says which source and why that value was picked inside the quoted range. A
profile names the model, GPU, tensor-parallel size and vLLM version it represents. A profile
YAML may start from a built-in (`base:`) and override any field; validation errors name the
file, the field and the offending value.

Units are in the field names: step-time coefficients stay in milliseconds, as the papers publish
them, and the engine converts them once.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autoscaler import errors
from autoscaler.yamlsafe import format_validation_error, load_yaml, read_text

DEFAULT_PROFILE = "llama-8b-h100"


class Profile(BaseModel):
    """Performance model of one vLLM replica (docs/simulator.md, "Step time").

    A step of T tokens (one per decoding sequence plus the prefill chunks) costs
    `max(decode_alpha_ms, prefill_alpha_ms + prefill_beta_ms_per_token * T)` (the weights are
    read once; GEMM work dominates above the roofline knee) plus
    `prefill_gamma_ms_per_token2 * sum(c^2 + 2*c*p)` over the chunks c of the step, each at
    offset p of its prompt (a chunk attends to the whole prefix before it, so a prompt of P
    tokens costs gamma*P^2 however it is chunked), plus `(decode_beta_ms_per_seq +
    sched_ms_per_seq) * B + decode_gamma_ms_per_ctx_token * sum(L)` over the B decoding
    sequences with contexts L, plus `sched_ms_per_seq` per prefilling sequence. KV
    transfer (P->D): `kv_bytes_per_token * prompt / kv_transfer_bytes_per_s +
    kv_transfer_setup_s`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = Field(min_length=1)
    """Profile name (a built-in's, or the YAML's own)."""
    model_name: str = Field(min_length=1)
    """Served model name: the `model_name` label of the emitted vLLM metrics."""
    gpu: str = Field(default="unspecified", min_length=1)
    """GPU the constants were derived for (e.g. H100-80GB-SXM)."""
    vllm_version: str = Field(default="unspecified", min_length=1)
    """vLLM release range the constants represent (per-token cost changes between releases)."""
    prefill_alpha_ms: float = Field(ge=0)
    """Fixed cost of a prefill step, ms."""
    prefill_beta_ms_per_token: float = Field(gt=0)
    """Cost per prompt (chunk) token, ms."""
    prefill_gamma_ms_per_token2: float = Field(ge=0)
    """Attention cost per squared chunk length, ms/token^2."""
    decode_alpha_ms: float = Field(gt=0)
    """Fixed cost of a decode step (weight read, all-reduce, CPU), ms."""
    decode_beta_ms_per_seq: float = Field(ge=0)
    """Cost per running sequence, ms."""
    decode_gamma_ms_per_ctx_token: float = Field(ge=0)
    """Cost per context token in the batch (KV read), ms."""
    allreduce_ms_per_token: float = Field(default=0.0, ge=0)
    """Tensor-parallel all-reduce cost per step token once the all-reduces are bandwidth-bound,
    ms (0 at TP1). Below `allreduce_latency_tokens` they are latency-bound, a fixed cost that
    decode_alpha_ms already holds."""
    allreduce_latency_tokens: int = Field(default=0, ge=0)
    """Step size (tokens) up to which the tensor-parallel all-reduces are latency-bound."""
    sched_ms_per_seq: float = Field(default=0.0, ge=0)
    """Scheduler/CPU cost per sequence scheduled in a step (decoding or prefilling), ms."""
    frontend_ms: float = Field(default=0.0, ge=0)
    """API-server time before a request reaches the scheduler (HTTP, tokenization), ms: it
    delays the first token and the end alike."""
    kv_capacity_tokens: int = Field(gt=0)
    """KV-cache capacity of one replica, tokens."""
    max_num_seqs: int = Field(gt=0)
    """vLLM --max-num-seqs."""
    max_num_batched_tokens: int = Field(gt=0)
    """vLLM --max-num-batched-tokens (the chunked-prefill token budget per step)."""
    cold_start_s: float = Field(ge=0)
    """Time from requesting a replica (pod) to serving, seconds."""
    kv_bytes_per_token: int = Field(gt=0)
    """KV bytes per token moved from a prefill to a decode replica."""
    kv_transfer_bytes_per_s: float = Field(gt=0)
    """P->D KV transfer bandwidth per replica, bytes/s."""
    kv_transfer_setup_s: float = Field(ge=0)
    """Fixed setup time of one KV transfer, seconds."""
    gpus_per_replica: int = Field(ge=1, le=64)
    """GPUs one replica holds (its tensor-parallel size): the unit of GPU-hours."""

    def prefill_step_s(self, chunks_sum: float, attn_sum: float, seqs: int = 1) -> float:
        """Duration of a pure prefill step over `seqs` chunks with the given token sum and
        attention sum (sum of c^2 + 2*c*p over chunks c at prompt offsets p)."""
        ms = (
            self.linear_ms(chunks_sum)
            + self.prefill_gamma_ms_per_token2 * attn_sum
            + self.sched_ms_per_seq * seqs
        )
        return ms / 1000.0

    def linear_ms(self, tokens: float) -> float:
        """The token-linear part of a step of `tokens` tokens: the weights are read once per
        step (decode_alpha_ms), and the GEMM work costs more only above the roofline knee; at
        TP > 1 the all-reduces, which run between the GEMMs, not beside them, add their
        bandwidth cost above the size where they stop being latency-bound."""
        return max(
            self.decode_alpha_ms, self.prefill_alpha_ms + self.prefill_beta_ms_per_token * tokens
        ) + self.allreduce_ms_per_token * max(tokens - self.allreduce_latency_tokens, 0.0)

    def decode_step_s(self, batch: int, context_sum: float) -> float:
        """Duration of a pure decode step of `batch` sequences holding `context_sum` tokens."""
        ms = (
            self.linear_ms(batch)
            + (self.decode_beta_ms_per_seq + self.sched_ms_per_seq) * batch
            + self.decode_gamma_ms_per_ctx_token * context_sum
        )
        return ms / 1000.0

    def idle_prefill_s(self, prompt_tokens: int) -> float:
        """Prefill time of one prompt alone on an idle replica, chunked by the token budget
        exactly as the engine does (full chunks of max_num_batched_tokens, then the rest).
        The attention terms of the chunks sum to P^2 for a prompt of P tokens."""
        p = max(int(prompt_tokens), 1)
        m = self.max_num_batched_tokens
        full, rest = divmod(p, m)
        ms = full * self.linear_ms(m) + (self.linear_ms(rest) if rest else 0.0)
        ms += (full + (1 if rest else 0)) * self.sched_ms_per_seq
        ms += self.prefill_gamma_ms_per_token2 * p * p
        return ms / 1000.0

    def kv_transfer_s(self, prompt_tokens: int) -> float:
        """P->D KV transfer time of one request's prompt."""
        return (
            self.kv_bytes_per_token * prompt_tokens / self.kv_transfer_bytes_per_s
            + self.kv_transfer_setup_s
        )


# The built-ins (H100 80GB SXM and PCIe, BF16, vLLM V1). Sources: docs/simulator.md "Constants".
# "SIM-MODEL" below is the project's research notes (section numbers as cited there);
# docs/simulator.md carries the figures a user needs.
BUILTIN_PROFILES: dict[str, Profile] = {
    "llama-8b-h100": Profile(
        name="llama-8b-h100",
        model_name="meta-llama/Llama-3.1-8B-Instruct",
        gpu="H100-80GB-SXM",
        vllm_version="V1 (fitted on 0.15.1)",
        # §2.8 "Prefill alpha_p": Vidur lin intercept + 1-2 ms CPU.
        prefill_alpha_ms=4.0,
        # §2.8 "Prefill beta_p": 0.025 recommended (range 0.021-0.030; Vidur lin x 1.1-1.2).
        prefill_beta_ms_per_token=0.025,
        # Causal attention at FlashAttention-3's published H100 SXM throughput (derived, not
        # fitted; docs/simulator.md "Constants"). A prompt of P tokens has about P^2/2 (query,
        # key) pairs, each 4 x 128 FLOPs per query head (q.k and p.v), so 2 x 32 layers x 32
        # heads x 128 = 262,144 FLOPs x P^2, counted as FlashAttention's benchmarks count causal
        # work. Its authors' BF16 causal forward figure at head dim 128 (arXiv 2407.08608v1,
        # Fig. 5) is 616 TF/s at 16k tokens (602 at 8k): 262,144 / 616e12 s = 4.26e-7 ms. Applied
        # to c^2 + 2cp per chunk, so a prompt of P tokens pays gamma*P^2 (SIM-MODEL corrections).
        # SIM-MODEL §2.8's 7e-7 assumed about 400 TF/s (it prices 375).
        prefill_gamma_ms_per_token2=4.26e-7,
        # Fitted (benchmarks/sim_fidelity.py --fit llama-8b-h100) on measured Llama-3.1-8B
        # runs on H100, vLLM 0.15.1 (the fit split of benchmarks/data/vllm_published.yaml:
        # the default-config general and codegen runs): 6.57 ms, standard error 9 %. The
        # weights alone take 4.8 ms to read at 3.35 TB/s.
        decode_alpha_ms=6.57,
        # Fitted likewise: 0.0344 ms per sequence (standard error 57 %).
        decode_beta_ms_per_seq=0.0344,
        # SIM-MODEL corrections: measured single-request ITL at 8k-128k context implies about
        # 4.4e-5 ms/token (128 KiB/token read at about 90 % of 3.35 TB/s), not §2.8's 6e-5 (65 %).
        decode_gamma_ms_per_ctx_token=4.4e-5,
        # A separate per-sequence scheduler term fitted to zero: the measured per-sequence cost
        # is decode_beta_ms_per_seq (docs/simulator.md, "Constants").
        sched_ms_per_seq=0.0,
        # Fitted likewise: 24.3 ms of API-server time per request (standard error 10 %).
        # These three were fitted by least squares; the soft-L1 refit the other profiles got
        # (6.81 ms, 0.0233 ms, 23.9 ms, each within one standard error of these) is not applied
        # here yet because every published 8B result would have to be re-run with it
        # (docs/simulator.md, "What still deviates").
        frontend_ms=24.3,
        # §2.8 "KV capacity": about 430k tokens at gpu_memory_utilization 0.9 (§2.2).
        kv_capacity_tokens=430_000,
        # §2.8 / §2.3: vLLM V1 API-server defaults on >=70 GiB non-A100 GPUs.
        max_num_seqs=1024,
        max_num_batched_tokens=8192,
        # §2.7 "Recommended defaults": 60 s cached, up to 120 s not; 120 s is the conservative
        # end and matches the policy schema's default cold_start_s.
        cold_start_s=120.0,
        # §2.1: 2 (K,V) x 32 layers x 8 KV heads x 128 dims x 2 B = 128 KiB.
        kv_bytes_per_token=131_072,
        # §2.6: RDMA at 200 Gb/s, about 25 GB/s.
        kv_transfer_bytes_per_s=25e9,
        # §2.6: "bytes / BW + about 1-2 ms setup"; midpoint.
        kv_transfer_setup_s=0.0015,
        gpus_per_replica=1,
    ),
    "llama-70b-tp4-h100": Profile(
        name="llama-70b-tp4-h100",
        model_name="meta-llama/Llama-3.1-70B-Instruct",
        gpu="H100-80GB-SXM",
        vllm_version="V1 (fitted on 0.15.1)",
        # §2.8 "Prefill alpha_p", 70B TP4 column.
        prefill_alpha_ms=12.0,
        # §2.8 "Prefill beta_p": 0.060 recommended (range 0.054-0.12).
        prefill_beta_ms_per_token=0.060,
        # As the 8B's, per GPU at TP4: 80 layers x 16 of the 64 query heads per GPU, 2 x 80 x
        # 16 x 128 = 327,680 FLOPs x P^2 on each GPU in parallel, at FlashAttention-3's 616 TF/s
        # (BF16 causal, head dim 128, 16k tokens; its benchmark used 16 heads of 128, the 70B's
        # per-GPU shape at TP4): 5.32e-7 ms (derived; §2.8's 8e-7 assumed about 400 TF/s).
        prefill_gamma_ms_per_token2=5.32e-7,
        # Fitted (soft-L1 loss, benchmarks/sim_fidelity.py --fit llama-70b-tp4-h100) on
        # Llama-2-70B TP4 H100 measurements (same layers, heads and hidden size as 3.1-70B; its
        # 128k vocabulary adds about 1 % of weights): 17.3 ms, standard error 19 % (§2.8: 17).
        decode_alpha_ms=17.34,
        # Fitted likewise: 0.0159 ms per sequence (standard error 90 %: weakly identified).
        decode_beta_ms_per_seq=0.0159,
        # 80 KiB per GPU at TP4 read at about 90 % of 3.35 TB/s: the 8B correction's bandwidth
        # share applied to §2.8's 3.7e-5 (at 65 %): 3.7e-5 x 0.65 / 0.90 = 2.67e-5 (derived).
        decode_gamma_ms_per_ctx_token=2.67e-5,
        # All-reduce bandwidth: Vidur's H100 DGX NCCL all-reduce microbenchmark at 4 GPUs
        # (microsoft/vidur data/profiling/network/h100_dgx/all_reduce.csv) is flat at a median
        # 0.041 ms up to 2 MiB and grows 7.16e-5 ms per 16 KiB token (least squares over
        # 4-64 MiB; intercept 0.023 ms) above. Two all-reduces per layer x 80 layers of
        # 8192-dim BF16 activations: 160 x 7.16e-5 = 0.0115 ms per step token once a step has
        # more than (0.041 - 0.023) / 7.16e-5 = 253 tokens; below that the 160 x 0.041 = 6.6 ms
        # of latency is part of decode_alpha_ms (SIM-MODEL §2.5: 5-7 ms per step). Derived from
        # the microbenchmark, not fitted: the fit runs (at most 128 sequences, prompts served
        # from the prefix cache) rarely have steps that large.
        allreduce_ms_per_token=0.0115,
        allreduce_latency_tokens=253,
        # As the 8B: the fitted per-sequence cost holds the scheduler's share.
        sched_ms_per_seq=0.0,
        # Fitted likewise: 32.3 ms, standard error 30 % (TP4 broadcasts each request to four
        # workers). The robust loss leaves out the 20 req/s run's mean-TTFT tail (121 ms over a
        # median of 68), which squared loss had let pull this to 40 (docs/simulator.md).
        frontend_ms=32.3,
        # §2.8 "KV capacity": about 455k tokens (§2.2: 445-465k at TP4).
        kv_capacity_tokens=455_000,
        # §2.8: vLLM V1 H100 defaults.
        max_num_seqs=1024,
        max_num_batched_tokens=8192,
        # §2.7: 70B TP4 180-300 s; midpoint.
        cold_start_s=240.0,
        # §2.1: 320 KiB per token in total (80 KiB on each of the 4 GPUs).
        kv_bytes_per_token=327_680,
        # Derived from §2.6: each of the 4 GPUs sends its 80 KiB/token shard over its own
        # 200 Gb/s RDMA NIC (about 25 GB/s), so 4 x 25 GB/s per replica.
        kv_transfer_bytes_per_s=100e9,
        # §2.6: about 1-2 ms setup; midpoint.
        kv_transfer_setup_s=0.0015,
        # TP4: four GPUs per replica.
        gpus_per_replica=4,
    ),
}

# Llama-3(.1)-8B on one H100 PCIe (80 GB HBM2e): the H100 SXM constants moved by the NVIDIA
# H100 datasheet ratios (SXM 3.35 TB/s and 989 dense BF16 TFLOPS; PCIe 2.0 TB/s and 756),
# checked against IOG-Foundation's vLLM 0.8.5 runs (benchmarks/data/vllm_published.yaml,
# 36 held-out points; docs/simulator.md). Everything not named here is the SXM profile's: the
# CPU costs (prefill_alpha, decode_beta), the KV budget (same 80 GB at utilisation 0.9), V1's
# defaults on >=70 GiB non-A100 GPUs (§2.3), the cold start and the KV transfer.
BUILTIN_PROFILES["llama-8b-h100-pcie"] = Profile.model_validate(
    BUILTIN_PROFILES["llama-8b-h100"].model_dump() | {
        "name": "llama-8b-h100-pcie",
        "gpu": "H100-80GB-PCIe",
        "vllm_version": "V1 (derived from the SXM fit; checked on 0.8.5)",
        # Compute-bound: 0.025 x 989/756.
        "prefill_beta_ms_per_token": 0.0327,
        # Compute-bound: the SXM's 4.26e-7 (FlashAttention-3's SXM throughput) x 989/756.
        "prefill_gamma_ms_per_token2": 5.57e-7,
        # Memory-bound weight read 16.06 GB / 2.0 TB/s = 8.03 ms, plus the SXM fit's fixed cost
        # beyond its own weight read (6.57 - 4.79 = 1.78 ms: CPU, launches; not scaled).
        "decode_alpha_ms": 9.81,
        # Memory-bound KV read: 4.4e-5 x 3.35/2.0.
        "decode_gamma_ms_per_ctx_token": 7.37e-5,
        # Fitted (benchmarks/sim_fidelity.py --fit llama-8b-h100-pcie --params frontend_ms,
        # soft-L1) on IOG's 1 req/s run: 4.14 ms, standard error 18 %. The front end is the
        # serving stack's and the benchmark client's, not the GPU's: the SXM profile's 24.3 ms
        # comes from a different harness (inference-perf); docs/simulator.md.
        "frontend_ms": 4.14,
    }
)


def builtin(name: str) -> Profile:
    """A built-in profile by name; ConfigError lists the known names otherwise."""
    try:
        return BUILTIN_PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_PROFILES))
        raise errors.ConfigError([f"unknown profile {name!r}; built-ins: {known}"]) from None


def parse_profile(text: str, *, source: str = "<profile>") -> Profile:
    """Parse profile YAML: a mapping with optional `base` (a built-in name, default
    llama-8b-h100) and any Profile field to override."""
    data = load_yaml(text, source=source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise errors.ConfigError(
            [f"{source}: (top level): expected a mapping, got {type(data).__name__}"]
        )
    base_name = data.pop("base", DEFAULT_PROFILE)
    if not isinstance(base_name, str) or base_name not in BUILTIN_PROFILES:
        known = ", ".join(sorted(BUILTIN_PROFILES))
        raise errors.ConfigError(
            [f"{source}: base: unknown built-in profile (got {base_name!r}); known: {known}"]
        )
    merged = BUILTIN_PROFILES[base_name].model_dump()
    if "name" not in data:
        # An overridden profile is no longer the built-in: say so in its name.
        merged["name"] = f"{base_name}+{Path(source).stem}" if data else base_name
    merged.update(data)
    try:
        return Profile.model_validate(merged)
    except ValidationError as exc:
        raise errors.ConfigError(format_validation_error(source, exc)) from exc


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile YAML file."""
    p = Path(path)
    text = read_text(p)
    return parse_profile(text, source=str(p))


def resolve_profile(name_or_path: str | Path | None) -> Profile:
    """A built-in by name, a YAML file by path, or the default when None."""
    if name_or_path is None:
        return BUILTIN_PROFILES[DEFAULT_PROFILE]
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name_or_path]
    return load_profile(name_or_path)
