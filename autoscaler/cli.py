"""The `pd-autoscaler` command: argument parsing and dispatch, nothing else.

Each sub-command's work lives in its own module behind a `main(args) -> int` function, imported
only when that command runs (so `validate` does not pay for statsmodels or kubernetes-asyncio).
Exit codes: 0 success, 1 runtime failure, 2 invalid input (bad policy, bad flags).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoscaler import __version__, errors

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_INVALID = 2


def _validate(args: argparse.Namespace) -> int:
    from autoscaler import spec as config  # noqa: PLC0415 - keep start-up light
    from autoscaler.policy import load, registry  # noqa: PLC0415

    if args.schema:
        print(json.dumps(config.PolicyFile.model_json_schema(), indent=2))
        return EXIT_OK
    if args.explain:
        print(explain())
        print("\nPolicy kinds:", ", ".join(f"{k} ({v})" for k, v in registry.available().items()))
        if not args.files:
            return EXIT_OK
    if not args.files:
        print("validate: give one or more policy files (or --explain / --schema)", file=sys.stderr)
        return EXIT_INVALID
    profile = None
    if args.profile is not None:
        from autoscaler.policy.slo import _load_profile  # noqa: PLC0415
        from autoscaler.profile import Profile  # noqa: PLC0415

        try:
            loaded = _load_profile(args.profile)
        except errors.ConfigError as exc:
            for line in exc.problems:
                print(f"validate --profile: {line}", file=sys.stderr)
            return EXIT_INVALID
        assert isinstance(loaded, Profile)
        profile = loaded
    bad = 0
    for f in args.files:
        try:
            policy = load.load_policy_file(f)
        except errors.ConfigError as exc:
            bad += 1
            for line in exc.problems:
                print(line, file=sys.stderr)
            continue
        roles = sum(len(p.roles) for p in policy.pools)
        print(f"{f}: valid ({len(policy.pools)} pool(s), {roles} role(s))")
        from autoscaler.policy.reach import unreachable_targets  # noqa: PLC0415

        for line in unreachable_targets(policy, profile):
            # A warning, not an error: the prompt mix may never hold such prompts.
            print(f"{f}: warning: {line}", file=sys.stderr)
    return EXIT_INVALID if bad else EXIT_OK


def explain() -> str:
    """Every field of the policy schema with its type and description, as an indented tree."""
    from autoscaler import spec as config  # noqa: PLC0415

    schema = config.PolicyFile.model_json_schema()
    defs: dict[str, Any] = schema.get("$defs", {})
    lines: list[str] = []

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return dict(defs[node["$ref"].rsplit("/", 1)[-1]])
        for key in ("anyOf", "allOf"):
            for option in node.get(key, []):
                if "$ref" in option:
                    return dict(defs[option["$ref"].rsplit("/", 1)[-1]])
        if node.get("type") == "array" and "items" in node:
            return resolve(node["items"])
        if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            return resolve(node["additionalProperties"])
        return node

    def type_of(node: dict[str, Any]) -> str:
        if "enum" in node:
            return " | ".join(str(v) for v in node["enum"])
        if "const" in node:
            return str(node["const"])
        if "$ref" in node:
            return str(node["$ref"]).rsplit("/", 1)[-1]
        if "anyOf" in node:
            return " | ".join(type_of(o) for o in node["anyOf"])
        if node.get("type") == "array":
            return f"list of {type_of(node.get('items', {}))}"
        return str(node.get("type", "any"))

    def walk(model: dict[str, Any], indent: int, seen: tuple[str, ...]) -> None:
        for name, prop in model.get("properties", {}).items():
            default = f" = {json.dumps(prop['default'])}" if "default" in prop else ""
            desc = " ".join(str(prop.get("description", "")).split())
            lines.append(f"{'  ' * indent}{name}: {type_of(prop)}{default}")
            if desc:
                lines.append(f"{'  ' * indent}    {desc}")
            sub = resolve(prop)
            title = str(sub.get("title", ""))
            if "properties" in sub and title not in seen:
                walk(sub, indent + 1, (*seen, title))

    lines.append("AutoscalingPolicy (pd-autoscaler.io/v1alpha1)")
    walk(schema, 1, ("PolicyFile",))
    return "\n".join(lines)


# Sub-commands implemented in other modules: name -> "module" exposing `main(args) -> int`.
_DELEGATED = {
    "demo": "autoscaler.sim.demo",
    "backtest": "autoscaler.sim.backtest",
    "run": "autoscaler.controller.factory",
    "sim-serve": "autoscaler.sim.serve",
    "trace-stitch": "autoscaler.sim.stitch",
    "profile": "autoscaler.sim.profile_fit",
    "tune": "autoscaler.sim.tune.main",
}


# Commands that draw tables and plots need the `sim` extra (rich, matplotlib); the controller
# image installs without it.
ROUTING_HELP = (
    "how requests pick a replica in every run: least-loaded (default) or prefix-aware (most "
    "cached prompt blocks first, as llm-d's prefix-cache scorer; differs only on a trace with "
    "block hashes, e.g. Mooncake's hash_ids)"
)
_NEEDS_SIM_EXTRA = {"demo", "backtest", "tune"}


def _delegate(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        if name in _NEEDS_SIM_EXTRA:
            missing = [m for m in ("rich", "matplotlib") if importlib.util.find_spec(m) is None]
            if missing:
                print(
                    f"{name}: needs {' and '.join(missing)}: install the simulator extra, "
                    "pip install 'pd-autoscaler[sim]'",
                    file=sys.stderr,
                )
                return EXIT_INVALID
        module = importlib.import_module(_DELEGATED[name])
        rc: int = module.main(args)
        return rc

    return run


def _positive(text: str) -> float:
    """A finite number > 0 (argparse type): 0 would mean "as 1" or a division by zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pd-autoscaler",
        description="Metrics-driven autoscaler for prefill/decode vLLM Deployments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto",
                        help="log lines as JSON or for a console (auto: console on a terminal)")
    parser.add_argument("--log-level", default="info",
                        help="debug, info, warning or error (default info)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    v = sub.add_parser("validate", help="validate policy files; explain the schema")
    v.add_argument("files", nargs="*", type=Path, help="policy YAML files")
    v.add_argument("--explain", action="store_true", help="describe every policy field")
    v.add_argument("--schema", action="store_true", help="print the JSON Schema (for editors)")
    v.add_argument("--profile", default=None,
                   help="performance profile (built-in or YAML) to check absolute latency "
                        "targets against; a role with an slo policy uses that one's")  # fmt: skip
    v.set_defaults(func=_validate)

    d = sub.add_parser("demo", help="the controller on a simulated cluster, replaying traffic")
    d.add_argument(
        "--trace", type=Path, help="trace file (default: shared trace or generator)"
    )
    d.add_argument(
        "--policy", type=Path, help="policy file (default: the 8B policy)"
    )
    d.add_argument("--out", type=Path, default=Path("out"), help="directory for plot and JSON")
    d.add_argument("--quiet", action="store_true", help="no live decision feed")
    d.add_argument("--profile", default=None, help="simulator profile name or YAML file")
    d.add_argument(
        "--duration-s", type=_positive, default=None, help="replay only the first N seconds"
    )
    d.add_argument(
        "--seconds",
        type=_non_negative,
        default=None,
        help="wall time to stretch the policy's replay to (default 20; 0 = full speed)",
    )
    d.add_argument(
        "--routing",
        choices=("least-loaded", "prefix-aware"),
        default="least-loaded",
        help=ROUTING_HELP,
    )
    d.set_defaults(func=_delegate("demo"))

    b = sub.add_parser("backtest", help="replay a trace through the controller and baselines")
    b.add_argument("--trace", type=Path, required=True,
                   help="trace file: Azure, Mooncake JSONL, BurstGPT or generic CSV (detected)")
    b.add_argument(
        "--policy",
        type=Path,
        action="append",
        default=None,
        help="policy file (repeatable; default: the 8B default policy)",
    )
    b.add_argument("--profile", default=None, help="simulator profile name or YAML file")
    b.add_argument(
        "--baseline",
        action="append",
        default=None,
        help="keda-queue | best-static | hindsight (repeatable; default: all)",
    )
    b.add_argument("--json", type=Path, dest="json_out",
                   help="write the summary JSON here (its directory must exist)")
    b.add_argument("--plot", type=Path, help="write a PNG plot here (its directory must exist)")
    b.add_argument("--speedup", type=_positive, default=1.0,
                   help="compress trace time by this factor (> 0; 2 = twice as fast)")
    b.add_argument("--rate-scale", type=_positive, default=1.0,
                   help="scale the arrival rate (> 0; 0.5 thins, 2 replicates requests)")
    b.add_argument("--tick-s", type=_positive, default=15.0, help="controller tick interval")
    b.add_argument("--scrape-s", type=_positive, default=5.0, help="metric scrape interval")
    b.add_argument("--no-progress", action="store_true",
                   help="no progress bar (terminal) or progress lines (otherwise)")
    b.add_argument("--window-s", type=_positive, default=None,
                   help="rate window (default 60 s)")
    b.add_argument(
        "--target-attainment",
        type=float,
        default=None,
        help="SLO attainment best-static, hindsight and the oracle must reach (default 0.99)",
    )
    b.add_argument(
        "--duration-s", type=_positive, default=None,
        help="replay only N seconds (from --start-s; trace time after --speedup)",
    )
    b.add_argument("--start-s", type=_non_negative, default=None,
                   help="replay from this second of the trace (it becomes 0; default 0)")
    b.add_argument("--warmup-s", type=_non_negative, default=None,
                   help="judge every run from this second on (requests before it and GPUs held "
                        "before it are left out; default 0). For a trace cut from running "
                        "traffic: one cold start plus one rate window (180 s on the built-in "
                        "profiles) lets each controller run reach its size first")
    b.add_argument("--stream", action="store_true",
                   help="read the trace from disk as the replay goes (needs it sorted by time; "
                        "memory does not grow with its length; baselines: keda-queue only)")
    b.add_argument("--ttft-floor-s", type=_positive, default=None, help="SLO TTFT floor (0.5)")
    b.add_argument(
        "--ttft-slowdown", type=_positive, default=None, help="SLO TTFT x idle prefill (3.0)"
    )
    b.add_argument("--itl-mean-s", type=_positive, default=None, help="SLO mean ITL (0.05)")
    b.add_argument(
        "--routing",
        choices=("least-loaded", "prefix-aware"),
        default="least-loaded",
        help=ROUTING_HELP,
    )
    b.set_defaults(func=_delegate("backtest"))

    tn = sub.add_parser("tune", help="fit a policy's parameters to a trace (cross-validated)")
    from autoscaler.sim.tune.options import add_arguments  # noqa: PLC0415 - no optuna import

    add_arguments(tn, _positive)
    tn.set_defaults(func=_delegate("tune"))

    r = sub.add_parser("run", help="run the controller against a Kubernetes cluster")
    # The flags come from the settings' field list (autoscaler/controller/settings.py); each also
    # has a PD_AUTOSCALER_* variable (docs/controller.md). Adoption servers: docs/adoption.md.
    from autoscaler.controller import settings  # noqa: PLC0415 - only pydantic, loaded anyway

    settings.add_flags(r)
    r.set_defaults(func=_delegate("run"))

    s = sub.add_parser("sim", help="simulator tools")
    ssub = s.add_subparsers(dest="sim_command", metavar="SIMCOMMAND", required=True)
    ss = ssub.add_parser("serve", help="serve simulated vLLM pods' /metrics over HTTP")
    ss.add_argument("--trace", type=Path,
                    help="trace file to replay (default: the built-in generator)")
    ss.add_argument("--profile", default=None, help="simulator profile name or YAML file")
    ss.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ss.add_argument("--port", type=_port, default=8000, help="port to listen on")
    ss.add_argument("--replicas", type=_count, default=2,
                    help="simulated vLLM pods served (one /metrics path each)")
    ss.add_argument("--naming", choices=["new", "old"], default="new",
                    help="vLLM metric names: new (kv_cache_usage_perc) or old (gpu_cache_...)")
    ss.add_argument("--speedup", type=_positive, default=1.0,
                    help="simulated seconds per wall second (> 0)")
    ss.add_argument("--aggregated", action="store_true",
                    help="one aggregated Deployment `sim` instead of the P/D pair")
    ss.set_defaults(func=_delegate("sim-serve"))

    pr = sub.add_parser("profile", help="fit or check a simulator profile against measurements")
    psub = pr.add_subparsers(dest="profile_command", metavar="PROFILECOMMAND", required=True)
    pf = psub.add_parser("fit", help="fit profile constants to measurements (bench files, "
                         "Prometheus range exports)")  # fmt: skip
    pc = psub.add_parser("check", help="replay measurements with a profile; per-point error")
    for q in (pf, pc):
        q.add_argument("results", nargs="*", type=Path,
                       help="`vllm bench serve --save-result` JSON files")  # fmt: skip
        q.add_argument("--prom-export", action="append", type=Path, default=None,
                       metavar="FILE", help="a Prometheus /api/v1/query_range JSON export of an "
                       "aggregated vLLM deployment's counters (repeatable; docs/simulator.md)")
        q.add_argument("--prometheus", default=None, metavar="URL",
                       help="fetch the export from this Prometheus first (prometheus-api-client;"
                       " written to --save-export, then read as --prom-export)")
        q.add_argument("--match", default="", metavar="MATCHERS",
                       help='label matchers picking the deployment, e.g. namespace="llm"')
        q.add_argument("--last-s", type=_positive, default=3600.0,
                       help="with --prometheus: the range's length in seconds (3600)")
        q.add_argument("--end", type=float, default=None, metavar="UNIX_S",
                       help="with --prometheus: the range's end (default: now)")
        q.add_argument("--step-s", type=_positive, default=15.0,
                       help="with --prometheus: the query step (15; your scrape interval)")
        q.add_argument("--bearer-token-file", type=Path, default=None,
                       help="with --prometheus: a file holding a bearer token")
        q.add_argument("--save-export", type=Path, default=None, metavar="FILE",
                       help="with --prometheus: where the fetched export is written "
                       "(default prom-export-<end>.json)")
        q.add_argument("--window-s", type=_positive, default=300.0,
                       help="cut a range export into measurements of this many seconds (300)")
        q.add_argument("--min-requests", type=_count, default=50,
                       help="skip export windows with fewer finished requests (50)")
        q.add_argument("--set", action="append", metavar="FIELD=VALUE",
                       help="a server setting of the runs (e.g. max_num_seqs=128)")  # fmt: skip
    pf.add_argument("--base", default=None, help="starting profile (built-in name or YAML)")
    pf.add_argument("--params", default="decode_alpha_ms,decode_beta_ms_per_seq,frontend_ms")
    pf.add_argument("--max-evaluations", type=int, default=200)
    pf.add_argument("--out", type=Path, required=True, help="profile YAML to write")
    pc.add_argument("--profile", default=None, help="built-in name or YAML (default 8B)")
    pr.set_defaults(func=_delegate("profile"))

    t = sub.add_parser("trace", help="trace tools")
    tsub = t.add_subparsers(dest="trace_command", metavar="TRACECOMMAND", required=True)
    st = tsub.add_parser("stitch", help="a multi-day trace: envelope shape x real token lengths")
    st.add_argument("--envelope", type=Path, required=True,
                    help="rate envelope CSV (ServeGen's aggregate 10-minute rates)")
    st.add_argument("--model", required=True, help="the envelope's model column to follow")
    st.add_argument("--tokens", type=Path, required=True,
                    help="trace whose prompt/output lengths are sampled (any trace format)")
    st.add_argument("--days", type=_positive, required=True, help="length of the output, days")
    st.add_argument("--peak-rps", type=_positive, required=True,
                    help="requests/s at the envelope's peak")
    st.add_argument("--out", type=Path, required=True, help="output generic CSV")
    st.add_argument("--seed", type=int, default=0, help="random seed (deterministic output)")
    st.add_argument(
        "--bursts", type=Path, default=None, help="keep this trace's short-term burst structure"
    )
    st.add_argument("--burst-window-s", type=_positive, default=10.0,
                    help="window of the burst pattern taken from --bursts, seconds")
    st.add_argument(
        "--burst-offset-s", type=float, default=0.0, help="where in --bursts the pattern starts"
    )
    st.set_defaults(func=_delegate("trace-stitch"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from autoscaler import logs  # noqa: PLC0415

    logs.configure(fmt=args.log_format, level=args.log_level)
    try:
        rc: int = args.func(args)
    except errors.ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pd-autoscaler validate --explain | head`
        return EXIT_OK
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
