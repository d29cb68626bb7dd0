"""The Kubernetes label-selector grammar, with limits, raising `SelectorError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# --- label selectors -----------------------------------------------------------------------------


class SelectorError(ValueError):
    """A label selector that does not parse; the message says where and why."""


# Limits: the HPA sends a handful of terms; anything far beyond is an attack or a mistake, and
# bounding it bounds the work per request.
MAX_SELECTOR_CHARS = 4096
MAX_SELECTOR_TERMS = 64
MAX_SET_VALUES = 64

_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS1123_SUBDOMAIN_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_INT_RE = re.compile(r"^-?[0-9]+$")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One term: `key op values`; ops as in k8s.io/apimachinery/pkg/labels."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            # As in Kubernetes: a missing label satisfies != and notin.
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        # gt / lt compare integers; a label that is not an integer never matches.
        if value is None or not _INT_RE.match(value):
            return False
        bound = int(self.values[0])
        return int(value) > bound if self.op == "gt" else int(value) < bound


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _check_key(key: str) -> None:
    if not key:
        msg = "empty label key"
        raise SelectorError(msg)
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.match(prefix)):
        msg = f"invalid label key prefix {prefix[:64]!r}"
        raise SelectorError(msg)
    if len(name) > 63 or not _NAME_RE.match(name):
        msg = f"invalid label key {key[:64]!r}"
        raise SelectorError(msg)


def _check_value(value: str) -> None:
    if value and (len(value) > 63 or not _NAME_RE.match(value)):
        msg = f"invalid label value {value[:64]!r}"
        raise SelectorError(msg)


# Tokens of the selector grammar; anything else is an identifier (key or value) run.
_TOKEN_RE = re.compile(r"\s*(==|!=|=|!|\(|\)|,|<|>|[^\s=!(),<>]+)")


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:  # only trailing whitespace remains
            if text[pos:].strip():
                msg = f"unexpected character at {pos}"
                raise SelectorError(msg)
            break
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def parse_selector(text: str) -> Selector:
    """Parse a Kubernetes label selector (`a=b,c!=d,e in (f,g),h notin (i),j,!k,l>3`).

    Raises `SelectorError` on malformed input or when the limits are exceeded.
    """
    if len(text) > MAX_SELECTOR_CHARS:
        msg = f"label selector longer than {MAX_SELECTOR_CHARS} characters"
        raise SelectorError(msg)
    if not text.strip():
        return Selector()
    tokens = _tokenize(text)
    reqs: list[Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            msg = "unexpected end of selector"
            raise SelectorError(msg)
        tok = tokens[i]
        i += 1
        return tok

    def peek() -> str | None:
        return tokens[i] if i < len(tokens) else None

    while True:
        if len(reqs) >= MAX_SELECTOR_TERMS:
            msg = f"more than {MAX_SELECTOR_TERMS} selector terms"
            raise SelectorError(msg)
        tok = take()
        if tok == "!":
            key = take()
            _check_key(key)
            reqs.append(Requirement(key, "!"))
        else:
            key = tok
            _check_key(key)
            nxt = peek()
            if nxt is None or nxt == ",":
                reqs.append(Requirement(key, "exists"))
            elif nxt in ("=", "==", "!="):
                take()
                nv = peek()
                # `key=` (empty value) is valid Kubernetes syntax and matches an empty label.
                value = "" if nv is None or nv == "," else take()
                if value in ("(", ")", "=", "!", "<", ">", "!=", "=="):
                    msg = f"unexpected {value!r} after {key}{nxt}"
                    raise SelectorError(msg)
                _check_value(value)
                reqs.append(Requirement(key, "!=" if nxt == "!=" else "=", (value,)))
            elif nxt in ("<", ">"):
                take()
                value = take()
                if not _INT_RE.match(value) or len(value) > 19:
                    msg = f"{key}{nxt} needs an integer, got {value[:32]!r}"
                    raise SelectorError(msg)
                reqs.append(Requirement(key, "gt" if nxt == ">" else "lt", (value,)))
            elif nxt in ("in", "notin"):
                take()
                if take() != "(":
                    msg = f"expected '(' after {key} {nxt}"
                    raise SelectorError(msg)
                values: list[str] = []
                while True:
                    v = take()
                    if v == ")" and not values:
                        msg = f"empty value set for {key} {nxt}"
                        raise SelectorError(msg)
                    if v in ("(", ")", ",", "=", "==", "!=", "!", "<", ">"):
                        msg = f"unexpected {v!r} in value set of {key}"
                        raise SelectorError(msg)
                    _check_value(v)
                    values.append(v)
                    if len(values) > MAX_SET_VALUES:
                        msg = f"more than {MAX_SET_VALUES} values for {key}"
                        raise SelectorError(msg)
                    sep = take()
                    if sep == ")":
                        break
                    if sep != ",":
                        msg = f"expected ',' or ')' in value set of {key}, got {sep[:32]!r}"
                        raise SelectorError(msg)
                reqs.append(Requirement(key, nxt, tuple(values)))
            else:
                msg = f"unexpected {nxt[:32]!r} after key {key[:64]!r}"
                raise SelectorError(msg)
        following = peek()
        if following is None:
            break
        take()
        if following != ",":
            msg = f"expected ',' between terms, got {following[:32]!r}"
            raise SelectorError(msg)
    return Selector(tuple(reqs))


