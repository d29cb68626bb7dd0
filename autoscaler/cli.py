"""The `pd-autoscaler` command: argument parsing and dispatch, nothing else.

Each sub-command's work lives in its own module behind a `main(args) -> int` function, imported
only when that command runs (so `validate` does not pay for statsmodels or kubernetes-asyncio).
Exit codes: 0 success, 1 runtime failure, 2 invalid input (bad policy, bad flags).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoscaler import __version__, errors

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_INVALID = 2


def _validate(args: argparse.Namespace) -> int:
    from autoscaler.policy import config, registry  # noqa: PLC0415 - keep start-up light

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
    bad = 0
    for f in args.files:
        try:
            policy = config.load_policy_file(f)
        except errors.ConfigError as exc:
            bad += 1
            for line in exc.problems:
                print(line, file=sys.stderr)
            continue
        roles = sum(len(p.roles) for p in policy.pools)
        print(f"{f}: valid ({len(policy.pools)} pool(s), {roles} role(s))")
    return EXIT_INVALID if bad else EXIT_OK


def explain() -> str:
    """Every field of the policy schema with its type and description, as an indented tree."""
    from autoscaler.policy import config  # noqa: PLC0415

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
    "run": "autoscaler.controller",
    "sim-serve": "autoscaler.sim.serve",
    "trace-stitch": "autoscaler.forecast.stitch",
}


def _delegate(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        module = importlib.import_module(_DELEGATED[name])
        rc: int = module.main(args)
        return rc

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pd-autoscaler",
        description="Metrics-driven autoscaler for prefill/decode vLLM Deployments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    v = sub.add_parser("validate", help="validate policy files; explain the schema")
    v.add_argument("files", nargs="*", type=Path, help="policy YAML files")
    v.add_argument("--explain", action="store_true", help="describe every policy field")
    v.add_argument("--schema", action="store_true", help="print the JSON Schema (for editors)")
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
        "--duration-s", type=float, default=None, help="replay only the first N seconds"
    )
    d.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="wall time to stretch the policy's replay to (default 20; 0 = full speed)",
    )
    d.set_defaults(func=_delegate("demo"))

    b = sub.add_parser("backtest", help="replay a trace through the controller and baselines")
    b.add_argument("--trace", type=Path, required=True)
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
    b.add_argument("--json", type=Path, dest="json_out", help="write the summary JSON here")
    b.add_argument("--plot", type=Path, help="write a PNG plot here")
    b.add_argument("--speedup", type=float, default=1.0, help="compress trace time by this factor")
    b.add_argument("--rate-scale", type=float, default=1.0, help="scale the arrival rate")
    b.add_argument("--tick-s", type=float, default=15.0, help="controller tick interval")
    b.add_argument("--scrape-s", type=float, default=5.0, help="metric scrape interval")
    b.add_argument("--no-progress", action="store_true")
    b.add_argument("--window-s", type=float, default=None, help="rate window (default 60 s)")
    b.add_argument(
        "--target-attainment",
        type=float,
        default=None,
        help="SLO attainment best-static, hindsight and the oracle must reach (default 0.99)",
    )
    b.add_argument(
        "--duration-s", type=float, default=None, help="replay only the first N seconds"
    )
    b.add_argument("--ttft-floor-s", type=float, default=None, help="SLO TTFT floor (0.5)")
    b.add_argument(
        "--ttft-slowdown", type=float, default=None, help="SLO TTFT x idle prefill (3.0)"
    )
    b.add_argument("--itl-mean-s", type=float, default=None, help="SLO mean ITL (0.05)")
    b.set_defaults(func=_delegate("backtest"))

    r = sub.add_parser("run", help="run the controller against a Kubernetes cluster")
    r.add_argument("--kubeconfig", type=Path)
    r.add_argument("--namespace")
    r.add_argument(
        "--policy",
        type=Path,
        help="policy file (else ConfigMaps labelled pd-autoscaler.io/policy=true in --namespace)",
    )
    r.add_argument("--prometheus-url")
    r.add_argument("--dry-run", action="store_true", default=None)
    # Adoption servers (docs/adoption.md); also PD_AUTOSCALER_* variables (docs/controller.md).
    r.add_argument("--external-metrics-port", type=int, metavar="PORT",
                   help="serve external.metrics.k8s.io over TLS on PORT")
    r.add_argument("--external-metrics-cert-dir", type=Path, metavar="DIR",
                   help="tls.crt and tls.key for --external-metrics-port")
    r.add_argument("--keda-grpc-port", type=int, metavar="PORT",
                   help="serve the KEDA External Scaler (gRPC) on PORT")
    r.add_argument("--keda-metrics-api", action="store_true", default=None,
                   help="serve KEDA's metrics-api JSON at /keda/v1/<pool>/<role> on the HTTP port")
    r.add_argument("--leader-label", action="store_true", default=None,
                   help="label this Pod pd-autoscaler.io/leader=true while leading (POD_NAME)")
    r.set_defaults(func=_delegate("run"))

    s = sub.add_parser("sim", help="simulator tools")
    ssub = s.add_subparsers(dest="sim_command", metavar="SIMCOMMAND", required=True)
    ss = ssub.add_parser("serve", help="serve simulated vLLM pods' /metrics over HTTP")
    ss.add_argument("--trace", type=Path)
    ss.add_argument("--profile", default=None)
    ss.add_argument("--host", default="127.0.0.1")
    ss.add_argument("--port", type=int, default=8000)
    ss.add_argument("--replicas", type=int, default=2)
    ss.add_argument("--naming", choices=["new", "old"], default="new")
    ss.add_argument("--speedup", type=float, default=1.0)
    ss.set_defaults(func=_delegate("sim-serve"))

    t = sub.add_parser("trace", help="trace tools")
    tsub = t.add_subparsers(dest="trace_command", metavar="TRACECOMMAND", required=True)
    st = tsub.add_parser("stitch", help="a multi-day trace: envelope shape x real token lengths")
    st.add_argument("--envelope", type=Path, required=True)
    st.add_argument("--model", required=True)
    st.add_argument("--tokens", type=Path, required=True)
    st.add_argument("--days", type=float, required=True)
    st.add_argument("--peak-rps", type=float, required=True)
    st.add_argument("--out", type=Path, required=True)
    st.add_argument("--seed", type=int, default=0)
    st.add_argument(
        "--bursts", type=Path, default=None, help="keep this trace's short-term burst structure"
    )
    st.add_argument("--burst-window-s", type=float, default=10.0)
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
