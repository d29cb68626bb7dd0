"""YAML from untrusted hands (a ConfigMap anyone with `edit` can write, a file from a ticket):
bounded before it is built, strict while it is built.

`load(text, source=...)` is `yaml.safe_load` plus:

- a size limit on the text (`MAX_BYTES`, the most a ConfigMap can hold), checked first;
- one pass over the parser's event stream (no objects built, no recursion) that refuses
  nesting deeper than `MAX_DEPTH` (a 5 KB document nested 1,000 levels deep escaped validation
  as RecursionError and killed the policy watch) and documents whose aliases would expand to
  more than `MAX_NODES` nodes (a "billion laughs" is a few hundred bytes);
- duplicate mapping keys rejected (YAML 1.2 forbids them; PyYAML silently keeps the last, so
  a pasted second `max_replicas:` would win without a word).

Every refusal is a `ConfigError` naming the source, the line and column when there is one, and
the key or the limit. libyaml's C parser is used when PyYAML has it (several times faster on
large documents); the checks are the same either way.

For callers on an event loop, `policy.load.parse_policy_async` runs the whole parse (this and
the validation) in a worker thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from autoscaler import errors

MAX_BYTES = 1024 * 1024
"""A ConfigMap's data is limited to 1 MiB in total by the API server; a policy file may not be
larger than what could be shipped that way."""
MAX_DEPTH = 32
"""A policy nests 7 levels (pools, roles, behavior, scale_up, rules, rule); plug-in configs get
the rest."""
MAX_NODES = 1_000_000
"""Scalars and collections after alias expansion; a 1 MiB policy without aliases has ~150,000."""

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_Loader):  # type: ignore[misc,valid-type]  # CSafeLoader has no stubs
    """safe_load's constructor, with duplicate keys an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may legitimately repeat keys it merges
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key; the base constructor reports it properly
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_yaml_map)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _prescan(text: str, source: str) -> None:
    """Depth and expanded size from the event stream; raises ConfigError."""
    depth = 0
    # Per open collection: nodes inside it so far (alias expansion included).
    stack: list[int] = [0]
    anchors: dict[str, int] = {}
    open_anchor: list[str | None] = []
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                msg = f"{_where(event.start_mark)}nested deeper than {MAX_DEPTH} levels"
                raise errors.ConfigError([f"{source}: {msg}"])
            stack.append(0)
            open_anchor.append(event.anchor)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            size = stack.pop() + 1
            anchor = open_anchor.pop()
            if anchor is not None:
                anchors[anchor] = size
            stack[-1] += size
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                anchors[event.anchor] = 1
            stack[-1] += 1
        elif isinstance(event, yaml.AliasEvent):
            # An unknown anchor is left for the loader to report with its own message.
            stack[-1] += anchors.get(event.anchor or "", 1)
        else:
            continue
        if stack[-1] > MAX_NODES or sum(stack) > MAX_NODES:
            msg = f"{_where(event.start_mark)}more than {MAX_NODES} nodes once aliases expand"
            raise errors.ConfigError([f"{source}: {msg}"])


def load(text: str, *, source: str) -> Any:
    """Bounded, strict `yaml.safe_load`; raises ConfigError naming source, line and problem."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_BYTES:
        raise errors.ConfigError(
            [f"{source}: {size} bytes; a policy may be at most {MAX_BYTES} bytes (1 MiB)"]
        )
    try:
        _prescan(text, source)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise errors.ConfigError([f"{source}: {_where(mark)}malformed YAML: {problem}"]) from exc
    except ValueError as exc:
        # int() of a scalar over Python's 4,300-digit limit (a pasted run of zeros).
        raise errors.ConfigError([f"{source}: unreadable number: {str(exc)[:120]}"]) from exc
    except RecursionError as exc:  # the prescan bounds depth; belt and braces
        msg = f"{source}: nested too deeply to parse"
        raise errors.ConfigError([msg]) from exc


# --- errors of documents validated by pydantic models (policies, profiles) ---------------------


def _loc(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    return ".".join(parts) or "(top level)"


def format_validation_error(source: str, exc: ValidationError) -> list[str]:
    """`FILE: path.to.field: message (got VALUE)`, one line per problem."""
    lines = []
    errs = exc.errors()
    locs = [tuple(e["loc"]) for e in errs]
    for err in errs:
        loc = tuple(err["loc"])
        # A list whose items failed also reports "too short after validation": noise.
        if err["type"] == "too_short" and any(o[: len(loc)] == loc and o != loc for o in locs):
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = ""
        if err["type"] not in ("missing",) and "input" in err:
            value = err["input"]
            if not isinstance(value, dict | list):
                text = _repr(value)
                got = f" (got {text[:60]}...{len(text)} characters)" if len(text) > 80 else (
                    f" (got {text})"
                )
        lines.append(f"{source}: {_loc(tuple(err['loc']))}: {msg}{got}")
    return lines


def _repr(value: Any) -> str:
    # repr() of a 5,000-digit int raises ValueError (Python's int-to-str limit).
    try:
        return repr(value)
    except ValueError:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"


def load_yaml(text: str, *, source: str) -> Any:
    """Bounded, strict yaml.safe_load (size, depth, alias expansion, duplicate keys: see
    this module); every problem a ConfigError naming file, line and column."""
    return load(text, source=source)


def read_text(path: str | Path) -> str:
    """A document's text, or a ConfigError naming the file and why it cannot be read."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except OSError as exc:
        raise errors.ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise errors.ConfigError([f"{p}: not UTF-8 text: {exc.reason}"]) from exc
