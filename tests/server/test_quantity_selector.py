"""Quantity formatting and label-selector parsing: the two pure parts of the metrics API
(external_metrics/quantity.py and selector.py)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.server.external_metrics.quantity import format_quantity
from autoscaler.server.external_metrics.selector import (
    MAX_SELECTOR_CHARS,
    MAX_SELECTOR_TERMS,
    Requirement,
    SelectorError,
    parse_selector,
)

pytestmark = pytest.mark.external_metrics

QUANTITY_RE = re.compile(r"^(0|[1-9][0-9]*)m?$")


def parse_quantity(text: str) -> float:
    """The inverse for our two forms (a plain integer or milli-units)."""
    return int(text[:-1]) / 1000 if text.endswith("m") else float(int(text))


@pytest.mark.parametrize(
    ("value", "want"),
    [
        pytest.param(0.0, "0", id="zero"),
        pytest.param(-0.0, "0", id="negative-zero"),
        pytest.param(3.0, "3", id="integer"),
        pytest.param(0.75, "750m", id="fraction"),
        pytest.param(1.5, "1500m", id="mixed"),
        pytest.param(2.0004, "2", id="rounds-to-integer"),
        pytest.param(0.0004, "0", id="below-half-milli"),
        pytest.param(0.0005, "1m", id="half-milli-rounds-up"),
        pytest.param(-4.2, "0", id="negative-clamped"),
        pytest.param(1e20, str(2**63 - 1), id="huge-clamped-to-int64"),
        pytest.param(1e16, "10000000000000000", id="large-integer-form"),
    ],
)
def test_format_quantity_table(value: float, want: str) -> None:
    """Whole numbers print plain, fractions in milli-units, out-of-range values are clamped."""
    assert format_quantity(value) == want


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_format_quantity_refuses_non_finite(bad: float) -> None:
    """NaN and infinities are missing data, never a number on the wire."""
    with pytest.raises(ValueError, match="finite"):
        format_quantity(bad)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_quantity_is_a_valid_nonnegative_quantity(value: float) -> None:
    """Any finite float gives a Kubernetes quantity ("N" or "Nm"), within half a milli-unit of
    the value (or clamped: negatives to 0, the top to int64)."""
    text = format_quantity(value)
    assert QUANTITY_RE.match(text), text
    back = parse_quantity(text)
    assert back >= 0
    if value <= 0:
        assert back == 0
    elif value < 9e15:
        assert abs(back - value) <= 0.0005 + 1e-9 * value
        if text.endswith("m"):
            assert int(text[:-1]) % 1000 != 0  # whole numbers never use the milli form
    else:
        assert not text.endswith("m")
        assert int(text) <= 2**63 - 1


@given(st.integers(min_value=0, max_value=2**53))
def test_format_quantity_integers_plain(n: int) -> None:
    """Replica counts (integers) always print as plain integers."""
    assert format_quantity(float(n)) == str(n)


# --- selectors ---------------------------------------------------------------------------------

LABELS = {"pool": "llama", "role": "decode", "namespace": "serving", "tier": "3"}


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        pytest.param("", True, id="empty-matches-all"),
        pytest.param("pool=llama", True, id="eq"),
        pytest.param("pool==llama", True, id="double-eq"),
        pytest.param("pool=other", False, id="eq-miss"),
        pytest.param("pool!=other", True, id="neq"),
        pytest.param("missing!=x", True, id="neq-missing-label-matches"),
        pytest.param("pool=llama,role=decode", True, id="and"),
        pytest.param("pool=llama, role=prefill", False, id="and-miss"),
        pytest.param("role in (prefill,decode)", True, id="in"),
        pytest.param("role in ( prefill , decode )", True, id="in-spaces"),
        pytest.param("role notin (decode)", False, id="notin"),
        pytest.param("missing notin (a)", True, id="notin-missing-matches"),
        pytest.param("missing in (a)", False, id="in-missing"),
        pytest.param("pool", True, id="exists"),
        pytest.param("!pool", False, id="not-exists"),
        pytest.param("!missing", True, id="not-exists-missing"),
        pytest.param("tier>2", True, id="gt"),
        pytest.param("tier<2", False, id="lt"),
        pytest.param("pool>2", False, id="gt-non-integer-label"),
        pytest.param("example.com/pool", False, id="prefixed-key"),
        pytest.param("missing=", False, id="empty-value"),
    ],
)
def test_selector_matches(text: str, matches: bool) -> None:
    """Each operator behaves as in k8s.io/apimachinery/pkg/labels."""
    assert parse_selector(text).matches(LABELS) is matches


def test_selector_parse_shape() -> None:
    """A compound selector parses into its requirements, in order."""
    sel = parse_selector("a=b,c!=d,e in (f,g),h notin (i),j,!k")
    assert sel.requirements == (
        Requirement("a", "=", ("b",)),
        Requirement("c", "!=", ("d",)),
        Requirement("e", "in", ("f", "g")),
        Requirement("h", "notin", ("i",)),
        Requirement("j", "exists"),
        Requirement("k", "!"),
    )


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("=x", id="no-key"),
        pytest.param("a=b=c", id="double-assign"),
        pytest.param("a in b", id="in-without-parens"),
        pytest.param("a in ()", id="empty-set"),
        pytest.param("a in (b", id="unclosed-set"),
        pytest.param("a in (b c)", id="set-missing-comma"),
        pytest.param("a=b,", id="trailing-comma"),
        pytest.param(",a=b", id="leading-comma"),
        pytest.param("a b", id="two-keys"),
        pytest.param("a>b", id="gt-non-integer"),
        pytest.param("a=(", id="paren-as-value"),
        pytest.param("-a=b", id="key-starts-with-dash"),
        pytest.param("a=" + "v" * 64, id="value-too-long"),
        pytest.param("k" * 64 + "=v", id="key-too-long"),
        pytest.param("Bad_Prefix/a=b", id="bad-prefix"),
        pytest.param("/a=b", id="empty-prefix"),
        pytest.param("a=b;c=d", id="semicolon"),
        pytest.param("a!", id="bang-after-key"),
        pytest.param("!", id="lone-bang"),
        pytest.param("a=b,,c=d", id="double-comma"),
    ],
)
def test_selector_rejects_malformed(text: str) -> None:
    """Malformed selectors raise SelectorError (which the API turns into a 400)."""
    with pytest.raises(SelectorError):
        parse_selector(text)


def test_selector_limits() -> None:
    """Too many terms or characters are refused before any work is done on them."""
    many = ",".join(f"k{i}=v" for i in range(MAX_SELECTOR_TERMS + 1))
    with pytest.raises(SelectorError, match="terms"):
        parse_selector(many)
    with pytest.raises(SelectorError, match="longer"):
        parse_selector("a=" + "b" * MAX_SELECTOR_CHARS)
    with pytest.raises(SelectorError, match="values"):
        parse_selector("a in (" + ",".join(f"v{i}" for i in range(100)) + ")")


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_selector_garbage_raises_only_selector_error(text: str) -> None:
    """Arbitrary text either parses or raises SelectorError: never another exception."""
    try:
        sel = parse_selector(text)
    except SelectorError:
        return
    sel.matches(LABELS)


_name = st.from_regex(r"\A[a-z0-9]([-a-z0-9_.]{0,10}[a-z0-9])?\Z")
_term = st.one_of(
    st.tuples(_name, st.sampled_from(["=", "==", "!="]), _name).map("".join),
    st.tuples(
        _name, st.sampled_from([" in ", " notin "]), st.lists(_name, min_size=1, max_size=4)
    ).map(lambda t: f"{t[0]}{t[1]}({','.join(t[2])})"),
    _name,
    _name.map(lambda n: "!" + n),
)


@given(st.lists(_term, min_size=1, max_size=10))
def test_selector_valid_terms_parse(terms: list[str]) -> None:
    """Any well-formed combination of terms parses into one requirement per term."""
    assert len(parse_selector(",".join(terms)).requirements) == len(terms)
