"""Request-trace loaders: file -> (arrival_s, prompt_tokens, output_tokens), sorted, from 0.

The format is detected from the first line (the shared traces README describes the files):

| format     | first line / record                                                    | time unit |
|------------|------------------------------------------------------------------------|-----------|
| `azure`    | `TIMESTAMP,ContextTokens,GeneratedTokens` (Azure LLM inference 2023/24) | datetime  |
| `mooncake` | a JSON object with `timestamp`, `input_length`, `output_length` (JSONL) | ms        |

Mooncake records may carry `hash_ids` (one id per 512-token block of the prompt, chained: equal
ids mean equal prefixes): they are kept as `Trace.block_hashes` (with `block_tokens` 512), so the
simulator's prefix caches see the trace's reuse.
| `burstgpt` | `Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`  | s         |
| `generic`  | `timestamp_s,input_tokens,output_tokens` (+ any extra columns, ignored) | s         |

Options: `speedup` divides every time (2.0 = the same requests in half the time); `rate_scale`
thins (< 1: each request kept with that probability) or replicates (> 1: each request gives
floor(rate_scale) copies plus one more with the fractional probability; copies land uniformly
between the request and the next one, so the local rate shape is kept). Both are deterministic
given `seed`. Token counts of 0 (BurstGPT failures) are kept; the engine serves them as 1 token.

A trace may span at most MAX_SPAN_S (a year) from its first to its last request: a row at
1e12 s is a wrong unit or a typo, and replaying it would allocate per-minute bins for 30,000
years. Errors are ConfigError lines naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import structlog

from autoscaler import errors

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_HEADER = (
    "Timestamp",
    "Model",
    "Request tokens",
    "Response tokens",
    "Total tokens",
    "Log Type",
)
GENERIC_HEADER = ("timestamp_s", "input_tokens", "output_tokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
# The longest span a replay supports (366 days; the longest public traces cover weeks).
MAX_SPAN_S = 366 * 86400.0


MOONCAKE_BLOCK_TOKENS = 512


class Trace(NamedTuple):
    """A request stream: arrival times from 0 (sorted) and token counts, one row per request;
    optionally each prompt's block hashes (prefix caching), `block_tokens` tokens per hash."""

    arrival_s: FloatArray
    prompt_tokens: IntArray
    output_tokens: IntArray
    block_hashes: list[tuple[int, ...]] | None = None
    block_tokens: int = 16

    def take(self, idx: npt.NDArray[np.int64] | npt.NDArray[np.bool_]) -> Trace:
        """The rows `idx` selects (an index or a mask), hashes included."""
        hashes = self.block_hashes
        if hashes is not None:
            rows = np.arange(len(self.arrival_s))[idx]
            hashes = [hashes[i] for i in rows.tolist()]
        return Trace(
            self.arrival_s[idx],
            self.prompt_tokens[idx],
            self.output_tokens[idx],
            hashes,
            self.block_tokens,
        )

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self.arrival_s) else 0.0


def _fail(path: Path, line: int, problem: str, column: str | None = None) -> errors.ConfigError:
    col = f" column {column!r}:" if column else ""
    return errors.ConfigError([f"{path}: line {line}:{col} {problem}"])


def detect_format(path: str | Path) -> str:
    """`azure`, `mooncake`, `burstgpt` or `generic`, from the file's first line."""
    p = Path(path)
    first = _first_line(p)
    return _detect(p, first)


def _first_line(p: Path) -> str:
    try:
        with p.open(encoding="utf-8-sig") as f:
            for line in f:
                if line.strip():
                    return line.strip()
    except OSError as exc:
        raise errors.ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise errors.ConfigError([f"{p}: not UTF-8 text: {exc.reason}"]) from exc
    raise errors.ConfigError([f"{p}: empty trace"])


def _detect(p: Path, first: str) -> str:
    if first.startswith("{"):
        return "mooncake"
    header = tuple(c.strip() for c in next(csv.reader([first])))
    if header == AZURE_HEADER:
        return "azure"
    if header == BURSTGPT_HEADER:
        return "burstgpt"
    if header == GENERIC_HEADER or (
        len(header) > len(GENERIC_HEADER) and set(GENERIC_HEADER) <= set(header)
    ):
        return "generic"
    known = "; ".join(",".join(h) for h in (AZURE_HEADER, BURSTGPT_HEADER, GENERIC_HEADER))
    raise _fail(
        p,
        1,
        f"unknown trace header {first[:120]!r}; expected one of: {known}; "
        f"or JSON lines with {', '.join(MOONCAKE_KEYS)}",
    )


def load_trace(
    path: str | Path,
    *,
    speedup: float = 1.0,
    rate_scale: float = 1.0,
    seed: int = 0,
    duration_s: float | None = None,
) -> Trace:
    """Load a trace file (format detected), shift it to start at 0, sort it, then apply
    `speedup`, `rate_scale` and the optional `duration_s` cut (after the speed-up).
    A generic CSV may carry extra columns: only the three named ones are read."""
    p = Path(path)
    if not speedup > 0 or math.isinf(speedup):
        raise errors.ConfigError([f"{p}: speedup must be a positive number, got {speedup}"])
    if not rate_scale > 0 or math.isinf(rate_scale):
        raise errors.ConfigError([f"{p}: rate_scale must be a positive number, got {rate_scale}"])
    fmt = detect_format(p)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:  # pragma: no cover - detect_format read it already
        raise errors.ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from exc
    hashes: list[tuple[int, ...]] | None = None
    if fmt == "mooncake":
        t, prompt, output, hashes = _parse_mooncake(p, text)
    else:
        t, prompt, output = _parse_csv(p, text, fmt)
    if len(t) == 0:
        raise errors.ConfigError([f"{p}: trace has a header but no requests"])
    order = np.argsort(t, kind="stable")
    span = float(t[order[-1]] - t[order[0]])
    if span > MAX_SPAN_S:
        raise errors.ConfigError([
            f"{p}: request {int(order[-1]) + 1} (in file order) arrives {span:.3g} s "
            f"({span / 86400:.3g} days) after the first; a replay spans at most "
            f"{MAX_SPAN_S / 86400:.0f} days (a wrong time unit, or a typo in that row?)"
        ])
    trace = Trace(t, prompt, output, hashes, MOONCAKE_BLOCK_TOKENS).take(order)
    trace = trace._replace(arrival_s=(trace.arrival_s - trace.arrival_s[0]) / speedup)
    if rate_scale != 1.0:
        trace = scale_rate(trace, rate_scale, seed=seed)
    if duration_s is not None:
        trace = trace.take(trace.arrival_s <= duration_s)
    return trace


def scale_rate(trace: Trace, factor: float, *, seed: int = 0) -> Trace:
    """Thin (factor < 1) or replicate (factor > 1) arrivals deterministically (see module doc)."""
    rng = np.random.default_rng(seed)
    n = len(trace.arrival_s)
    whole = math.floor(factor)
    frac = factor - whole
    copies = np.full(n, whole, dtype=np.int64) + (rng.random(n) < frac)
    idx = np.repeat(np.arange(n), copies)
    # The first copy of each request keeps its time; further copies spread over the gap to the
    # next request (the last request's copies stay on it).
    first = np.ones(len(idx), dtype=bool)
    first[1:] = idx[1:] != idx[:-1]
    gaps = np.diff(trace.arrival_s, append=trace.arrival_s[-1]) if n else np.zeros(0)
    t = trace.arrival_s[idx] + np.where(first, 0.0, rng.random(len(idx)) * gaps[idx])
    order = np.argsort(t, kind="stable")
    t = t[order]
    if len(t):
        t = t - t[0]
    # Copies are the same prompts: they keep their block hashes.
    return trace.take(idx[order])._replace(arrival_s=t)


def _int(p: Path, line: int, column: str, raw: str) -> int:
    try:
        v = float(raw)
    except ValueError:
        raise _fail(p, line, f"not a number: {raw!r}", column) from None
    if not math.isfinite(v) or v < 0 or v != int(v):
        raise _fail(p, line, f"expected a non-negative integer, got {raw!r}", column)
    return int(v)


def _float(p: Path, line: int, column: str, raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise _fail(p, line, f"not a number: {raw!r}", column) from None
    if not math.isfinite(v):
        raise _fail(p, line, f"not a finite number: {raw!r}", column)
    return v


def _parse_csv(p: Path, text: str, fmt: str) -> tuple[FloatArray, IntArray, IntArray]:
    reader = csv.reader(io.StringIO(text))
    header = [c.strip() for c in next(reader)]
    cols: tuple[str, ...]
    if fmt == "azure":
        cols = AZURE_HEADER
        t_col, in_col, out_col = "TIMESTAMP", "ContextTokens", "GeneratedTokens"
    elif fmt == "burstgpt":
        cols = BURSTGPT_HEADER
        t_col, in_col, out_col = "Timestamp", "Request tokens", "Response tokens"
    else:
        # Extra columns (a request id, a model name) are ignored; load_trace's docstring says so.
        cols = tuple(header)
        t_col, in_col, out_col = GENERIC_HEADER
        extra = [c for c in header if c not in GENERIC_HEADER]
        if extra:
            structlog.get_logger(__name__).warning(
                "trace_extra_columns_ignored", file=str(p), columns=extra
            )
    it, ii, io_ = header.index(t_col), header.index(in_col), header.index(out_col)
    stamps: list[str] = []
    prompt: list[int] = []
    output: list[int] = []
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(cols):
            raise _fail(p, line, f"expected {len(cols)} columns, got {len(row)}")
        stamps.append(row[it].strip())
        prompt.append(_int(p, line, in_col, row[ii].strip()))
        output.append(_int(p, line, out_col, row[io_].strip()))
    if fmt == "azure":
        t = _parse_datetimes(p, stamps, t_col)
    else:
        t = np.array([_float(p, i + 2, t_col, s) for i, s in enumerate(stamps)], dtype=np.float64)
    return t, np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64)


def _parse_datetimes(p: Path, stamps: list[str], column: str) -> FloatArray:
    try:
        ns = np.array(stamps, dtype="datetime64[ns]")
    except ValueError:
        # Find the offending row for the message (data rows start on line 2).
        for i, s in enumerate(stamps):
            try:
                np.datetime64(s, "ns")
            except ValueError:
                raise _fail(p, i + 2, f"not a datetime: {s!r}", column) from None
        raise  # pragma: no cover - the bulk parse failed, so one row must fail
    if np.isnat(ns).any():
        i = int(np.flatnonzero(np.isnat(ns))[0])
        raise _fail(p, i + 2, f"not a datetime: {stamps[i]!r}", column)
    seconds: FloatArray = (ns - ns.min()).astype(np.int64).astype(np.float64) / 1e9
    return seconds


def _parse_mooncake(
    p: Path, text: str
) -> tuple[FloatArray, IntArray, IntArray, list[tuple[int, ...]] | None]:
    t: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    hashes: list[tuple[int, ...]] = []
    with_hashes = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(p, line_no, f"invalid JSON at column {exc.colno}: {exc.msg}") from None
        if not isinstance(rec, dict):
            raise _fail(p, line_no, "expected a JSON object")
        for key in MOONCAKE_KEYS:
            if key not in rec:
                raise _fail(p, line_no, "missing field", key)
        t.append(_float(p, line_no, "timestamp", str(rec["timestamp"])) / 1000.0)
        prompt.append(_int(p, line_no, "input_length", str(rec["input_length"])))
        output.append(_int(p, line_no, "output_length", str(rec["output_length"])))
        ids = rec.get("hash_ids")
        if ids is None:
            hashes.append(())
            continue
        if not isinstance(ids, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) for h in ids
        ):
            raise _fail(p, line_no, "expected a list of integers", "hash_ids")
        # Only whole blocks are cacheable: a trailing partial block's id is dropped.
        hashes.append(tuple(ids[: prompt[-1] // MOONCAKE_BLOCK_TOKENS]))
        with_hashes += 1
    return (
        np.array(t, dtype=np.float64),
        np.array(prompt, dtype=np.int64),
        np.array(output, dtype=np.int64),
        hashes if with_hashes else None,
    )
