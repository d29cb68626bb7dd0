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
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, TextIO

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
# Requests per chunk read from a file: Python objects live per chunk, numpy arrays after.
CHUNK_ROWS = 1 << 16


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
    start_s: float = 0.0,
) -> Trace:
    """Load a trace file (format detected), shift it to start at 0, sort it, then apply
    `speedup`, `rate_scale` and the optional window [`start_s`, `start_s` + `duration_s`]
    (after the speed-up; the window's start becomes 0). A generic CSV may carry extra columns:
    only the three named ones are read. The file is parsed in chunks (`iter_trace` streams it
    instead, for files in time order); only the arrays are kept whole."""
    p = Path(path)
    _check_options(p, speedup, rate_scale, start_s)
    parts = list(_raw_chunks(p, detect_format(p), CHUNK_ROWS))
    if not parts:
        raise errors.ConfigError([f"{p}: trace has a header but no requests"])
    t = np.concatenate([c.t for c in parts])
    prompt = np.concatenate([c.prompt for c in parts])
    output = np.concatenate([c.output for c in parts])
    hashes: list[tuple[int, ...]] | None = None
    if any(c.hashes is not None for c in parts):
        hashes = [h for c in parts for h in (c.hashes or [()] * len(c.t))]
    order = np.argsort(t, kind="stable")
    span = float(t[order[-1]] - t[order[0]])
    if span > MAX_SPAN_S:
        raise errors.ConfigError(
            [
                f"{p}: request {int(order[-1]) + 1} (in file order) arrives {span:.3g} s "
                f"({span / 86400:.3g} days) after the first; a replay spans at most "
                f"{MAX_SPAN_S / 86400:.0f} days (a wrong time unit, or a typo in that row?)"
            ]
        )
    trace = Trace(t, prompt, output, hashes, MOONCAKE_BLOCK_TOKENS).take(order)
    trace = trace._replace(arrival_s=(trace.arrival_s - trace.arrival_s[0]) / speedup)
    if rate_scale != 1.0:
        trace = scale_rate(trace, rate_scale, seed=seed)
    if start_s or duration_s is not None:
        trace = window(trace, start_s=start_s, duration_s=duration_s)
    return trace


def window(trace: Trace, *, start_s: float = 0.0, duration_s: float | None = None) -> Trace:
    """The requests arriving in [start_s, start_s + duration_s] (both ends included, as the
    `--duration-s` cut always was), shifted so start_s is 0 (`iter_trace` cuts the same way)."""
    keep = trace.arrival_s >= start_s
    if duration_s is not None:
        keep &= trace.arrival_s <= start_s + duration_s
    cut = trace.take(keep)
    return cut._replace(arrival_s=cut.arrival_s - start_s) if start_s else cut


def iter_trace(
    path: str | Path,
    *,
    speedup: float = 1.0,
    start_s: float = 0.0,
    duration_s: float | None = None,
    chunk_rows: int = 0,
) -> Iterator[Trace]:
    """The trace of `load_trace` (without `rate_scale`), streamed: chunks of about
    `chunk_rows` requests (default CHUNK_ROWS) in time order, read from disk as they are
    consumed. Times run from the file's first request; a window reads no further than its end.
    Unlike `load_trace` it cannot sort: a row earlier than the row before it is a ConfigError
    naming its line (sort the file by time, or load it whole with `load_trace`)."""
    p = Path(path)
    _check_options(p, speedup, 1.0, start_s)
    rows = chunk_rows or CHUNK_ROWS
    end = math.inf if duration_s is None else start_s + duration_s
    origin: float | None = None
    last = -math.inf
    seen = 0
    for c in _raw_chunks(p, detect_format(p), rows):
        if not len(c.t):
            continue
        if origin is None:
            origin = float(c.t[0])
        back = np.flatnonzero(np.diff(c.t, prepend=last) < 0)
        if back.size:
            i = int(back[0])
            before = last if i == 0 else float(c.t[i - 1])
            raise _fail(
                p,
                c.lines[i],
                f"arrives at {c.t[i] - origin:.6g} s, before the row above it "
                f"({before - origin:.6g} s): streaming a trace needs it sorted by time "
                "(sort the file, or load it whole)",
            )
        last = float(c.t[-1])
        if last - origin > MAX_SPAN_S:
            i = int(np.argmax(c.t - origin > MAX_SPAN_S))
            raise _fail(
                p,
                c.lines[i],
                f"arrives {(c.t[i] - origin) / 86400:.3g} days after the first request; a replay "
                f"spans at most {MAX_SPAN_S / 86400:.0f} days (a wrong time unit, or a typo?)",
            )
        t = (c.t - origin) / speedup
        keep = (t >= start_s) & (t <= end)
        if keep.any():
            part = Trace(t, c.prompt, c.output, c.hashes, MOONCAKE_BLOCK_TOKENS).take(keep)
            seen += len(part.arrival_s)
            yield part._replace(arrival_s=part.arrival_s - start_s) if start_s else part
        if t[-1] > end:
            return
    if origin is None:
        raise errors.ConfigError([f"{p}: trace has a header but no requests"])


class StreamSummary(NamedTuple):
    """What a report needs of a streamed trace, from one pass: requests, last arrival,
    requests and prompt tokens per bin (`bin_s`), and whether any request carries block hashes
    (then the replicas' prefix caches are on, as for a Trace with `block_hashes`)."""

    requests: int
    duration_s: float
    bin_s: float
    requests_by_bin: IntArray
    prompt_tokens_by_bin: IntArray
    hashed: bool = False


class TraceStream:
    """A trace file read on demand: every iteration streams it anew from disk (`iter_trace`),
    so several replays share it without holding it; `summary()` reads it once for the figures
    a report needs (and remembers them)."""

    def __init__(
        self,
        path: str | Path,
        *,
        speedup: float = 1.0,
        start_s: float = 0.0,
        duration_s: float | None = None,
        chunk_rows: int = 0,
    ) -> None:
        self.path = Path(path)
        _check_options(self.path, speedup, 1.0, start_s)
        detect_format(self.path)  # a missing or unknown file fails here, before any replay
        self.speedup = speedup
        self.start_s = start_s
        self.duration_s_cut = duration_s
        self.chunk_rows = chunk_rows
        self.block_tokens = MOONCAKE_BLOCK_TOKENS
        self._summary: StreamSummary | None = None

    def __iter__(self) -> Iterator[Trace]:
        return iter_trace(
            self.path,
            speedup=self.speedup,
            start_s=self.start_s,
            duration_s=self.duration_s_cut,
            chunk_rows=self.chunk_rows,
        )

    def summary(self, bin_s: float = 60.0) -> StreamSummary:
        if self._summary is not None and self._summary.bin_s == bin_s:
            return self._summary
        n = 0
        last = 0.0
        reqs = np.zeros(0, dtype=np.int64)
        tokens = np.zeros(0, dtype=np.int64)
        hashed = False
        for c in self:
            hashed = hashed or c.block_hashes is not None
            b = (c.arrival_s // bin_s).astype(np.int64)
            top = int(b[-1]) + 1
            if len(reqs) < top:
                size = max(top, 2 * len(reqs))
                reqs = np.pad(reqs, (0, size - len(reqs)))
                tokens = np.pad(tokens, (0, size - len(tokens)))
            reqs[:top] += np.bincount(b, minlength=top)
            tokens[:top] += np.bincount(b, weights=c.prompt_tokens, minlength=top).astype(np.int64)
            n += len(c.arrival_s)
            last = float(c.arrival_s[-1])
        nb = int(last // bin_s) + 1 if n else 0
        self._summary = StreamSummary(n, last, bin_s, reqs[:nb], tokens[:nb], hashed)
        return self._summary

    @property
    def duration_s(self) -> float:
        """The last arrival (one pass over the file the first time)."""
        return self.summary().duration_s


def _check_options(p: Path, speedup: float, rate_scale: float, start_s: float) -> None:
    if not speedup > 0 or math.isinf(speedup):
        raise errors.ConfigError([f"{p}: speedup must be a positive number, got {speedup}"])
    if not rate_scale > 0 or math.isinf(rate_scale):
        raise errors.ConfigError([f"{p}: rate_scale must be a positive number, got {rate_scale}"])
    if not start_s >= 0 or math.isinf(start_s):
        raise errors.ConfigError([f"{p}: the window start must be >= 0 s, got {start_s}"])


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


class _Chunk(NamedTuple):
    """Rows of a file as read (not sorted): times in seconds (azure datetimes: from the file's
    first row, as exact as their nanoseconds allow), the file line of each row (for errors)."""

    t: FloatArray
    prompt: IntArray
    output: IntArray
    hashes: list[tuple[int, ...]] | None
    lines: list[int]


def _raw_chunks(p: Path, fmt: str, rows: int) -> Iterator[_Chunk]:
    try:
        with p.open(encoding="utf-8-sig", newline="") as fh:
            if fmt == "mooncake":
                yield from _mooncake_chunks(p, fh, rows)
            else:
                yield from _csv_chunks(p, fh, fmt, rows)
    except OSError as exc:
        raise errors.ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise errors.ConfigError([f"{p}: not UTF-8 text: {exc.reason}"]) from exc


def _csv_chunks(p: Path, fh: TextIO, fmt: str, rows: int) -> Iterator[_Chunk]:
    reader = csv.reader(fh)
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
    width = len(cols)
    origin: list[np.datetime64] = []  # the first datetime of the file (azure)

    def chunk(stamps: list[str], pr: list[str], out: list[str], lines: list[int]) -> _Chunk:
        if fmt == "azure":
            t = _parse_datetimes(p, stamps, t_col, lines, origin)
        else:
            t = _floats(p, stamps, t_col, lines)
        return _Chunk(t, _ints(p, pr, in_col, lines), _ints(p, out, out_col, lines), None, lines)

    stamps: list[str] = []
    prompt: list[str] = []
    output: list[str] = []
    lines: list[int] = []
    for row in reader:
        if not row or (not row[0].strip() and all(not c.strip() for c in row)):
            continue  # a blank line (the first test alone settles almost every row)
        if len(row) != width:
            raise _fail(p, reader.line_num, f"expected {width} columns, got {len(row)}")
        stamps.append(row[it].strip())
        prompt.append(row[ii].strip())
        output.append(row[io_].strip())
        lines.append(reader.line_num)
        if len(lines) >= rows:
            yield chunk(stamps, prompt, output, lines)
            stamps, prompt, output, lines = [], [], [], []
    if lines:
        yield chunk(stamps, prompt, output, lines)


def _numbers(p: Path, raw: list[str], column: str, lines: list[int]) -> FloatArray:
    """The column as floats, converted in bulk; the first bad value named by its line."""
    try:
        return np.array(raw, dtype=np.float64)
    except ValueError:
        for i, s in enumerate(raw):
            try:
                float(s)
            except ValueError:
                raise _fail(p, lines[i], f"not a number: {s!r}", column) from None
        raise  # pragma: no cover - the bulk conversion failed, so one value must fail


def _floats(p: Path, raw: list[str], column: str, lines: list[int]) -> FloatArray:
    v = _numbers(p, raw, column, lines)
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        i = int(bad[0])
        raise _fail(p, lines[i], f"not a finite number: {raw[i]!r}", column)
    return v


def _ints(p: Path, raw: list[str], column: str, lines: list[int]) -> IntArray:
    v = _numbers(p, raw, column, lines)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~np.isfinite(v) | (v < 0) | (v != np.floor(v)))
    if bad.size:
        i = int(bad[0])
        raise _fail(p, lines[i], f"expected a non-negative integer, got {raw[i]!r}", column)
    return v.astype(np.int64)


def _parse_datetimes(
    p: Path, stamps: list[str], column: str, lines: list[int], origin: list[np.datetime64]
) -> FloatArray:
    """Seconds after `origin` (the file's first datetime, set by the first call): nanoseconds
    subtracted as integers first, so the float keeps the trace's 100 ns resolution."""
    try:
        ns = np.array(stamps, dtype="datetime64[ns]")
    except ValueError:
        for i, s in enumerate(stamps):
            try:
                np.datetime64(s, "ns")
            except ValueError:
                raise _fail(p, lines[i], f"not a datetime: {s!r}", column) from None
        raise  # pragma: no cover - the bulk parse failed, so one row must fail
    if np.isnat(ns).any():
        i = int(np.flatnonzero(np.isnat(ns))[0])
        raise _fail(p, lines[i], f"not a datetime: {stamps[i]!r}", column)
    if not origin:
        origin.append(ns[0])
    seconds: FloatArray = (ns - origin[0]).astype(np.int64).astype(np.float64) / 1e9
    return seconds


def _mooncake_chunks(p: Path, fh: TextIO, rows: int) -> Iterator[_Chunk]:
    t: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    hashes: list[tuple[int, ...]] = []
    lines: list[int] = []
    with_hashes = 0

    def chunk() -> _Chunk:
        return _Chunk(
            np.array(t, dtype=np.float64),
            np.array(prompt, dtype=np.int64),
            np.array(output, dtype=np.int64),
            hashes if with_hashes else None,
            lines,
        )

    for line_no, line in enumerate(fh, start=1):
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
        lines.append(line_no)
        ids = rec.get("hash_ids")
        if ids is None:
            hashes.append(())
        elif not isinstance(ids, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) for h in ids
        ):
            raise _fail(p, line_no, "expected a list of integers", "hash_ids")
        else:
            # Only whole blocks are cacheable: a trailing partial block's id is dropped.
            hashes.append(tuple(ids[: prompt[-1] // MOONCAKE_BLOCK_TOKENS]))
            with_hashes += 1
        if len(lines) >= rows:
            yield chunk()
            t, prompt, output, hashes, lines = [], [], [], [], []
            with_hashes = 0
    if lines:
        yield chunk()
