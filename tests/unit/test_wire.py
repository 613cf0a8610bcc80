"""Properties of the wire checks (outbound.wire) every AMI header and channel variable
goes through before a byte is written: what could end a header or an action is refused,
everything else passes unchanged (no silent "cleaning")."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from outbound.wire import (
    MAX_VALUE,
    UnsafeValue,
    channel_variable,
    check_fields,
    check_key,
    check_value,
)

# No example database: nothing is written into the working tree.
NO_DB = settings(database=None)

BREAKERS = "\r\n\0"
SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
# Any text AMI carries as it is: no CR, LF, NUL, no lone surrogate (not encodable).
SAFE_CHAR = st.characters(blacklist_categories=("Cs",), blacklist_characters=BREAKERS)
safe_text = st.text(SAFE_CHAR, max_size=MAX_VALUE // 4)  # <= MAX_VALUE bytes in UTF-8
IDENTIFIER = st.from_regex(r"[A-Za-z][A-Za-z0-9_()-]{0,79}", fullmatch=True)


def with_inside(char: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Text (of any kind) with `char` somewhere in it: start, middle or end."""
    return st.builds(lambda a, c, b: a + c + b, st.text(max_size=50), char, st.text(max_size=50))


def refused(call: Callable[..., object], *args: object) -> UnsafeValue:
    with pytest.raises(UnsafeValue) as info:
        call(*args)
    return info.value


@NO_DB
@given(value=with_inside(st.sampled_from(BREAKERS)))
@example(value='"Eve" <1>\r\nAction: Originate\r\nChannel: Local/666@outbound-dial')
@example(value="Eve\r\n\r\nAction: Hangup")
@example(value="\n")
@example(value="trailing\r")
@example(value="nul\0truncates in C")
def test_given_cr_lf_or_nul_anywhere_when_checked_then_refused_everywhere(value: str) -> None:
    error = refused(check_value, "CallerID", value)
    refused(check_fields, {"Action": "Originate", "CallerID": value})
    refused(check_fields, {"Variable": ["OUTBOUND_ATTEMPT_ID=a-1", f"CONTACT_NAME={value}"]})
    refused(channel_variable, "CONTACT_NAME", value)

    assert str(error).startswith("CallerID: contains ")


@NO_DB
@given(value=st.text(SAFE_CHAR, min_size=MAX_VALUE + 1, max_size=MAX_VALUE + 300))
def test_given_a_value_longer_than_the_limit_when_checked_then_refused(value: str) -> None:
    error = refused(check_value, "CallerID", value)
    refused(check_fields, {"Variable": [f"X={value}"]})
    refused(channel_variable, "CONTACT_NAME", value)

    assert f"{len(value.encode())} bytes" in str(error)


def test_given_a_value_of_exactly_the_limit_when_checked_then_it_passes() -> None:
    value = "x" * MAX_VALUE

    assert check_value("CallerID", value) == value
    refused(check_value, "CallerID", value + "x")


@NO_DB
@given(value=safe_text)
@example(value='"O\'Brien, Seán" <+49 30 1234>')
@example(value="C:\\dial\\\\plan \\r\\n (escaped, not a line break)")
@example(value="Zoë Ünal 張偉 😀 ✓ \u2028 \x85 \x0b")  # other "line breaks" AMI does not split on
@example(value="${EXTEN} $[1+1] ;,|=:")
@example(value="")
def test_given_quotes_backslashes_or_unicode_when_checked_then_returned_unchanged(
    value: str,
) -> None:
    fields = {"Action": "Originate", "CallerID": value, "Variable": [f"A={value}", value]}

    assert check_value("CallerID", value) == value
    assert check_fields(fields) == fields
    assert channel_variable("CONTACT_NAME", value) == f"CONTACT_NAME={value}"


@NO_DB
@given(number=st.integers() | st.floats(allow_nan=False))
def test_given_a_non_text_value_when_checked_then_its_text_is_returned(number: float) -> None:
    assert check_value("Timeout", number) == str(number)
    assert check_fields({"Timeout": number}) == {"Timeout": str(number)}


@NO_DB
@given(value=with_inside(SURROGATES).filter(lambda v: not set(v) & set(BREAKERS)))
def test_given_a_lone_surrogate_when_checked_then_refused_as_not_utf8(value: str) -> None:
    error = refused(check_value, "CallerID", value)
    refused(check_fields, {"CallerID": value})
    refused(channel_variable, "CONTACT_NAME", value)

    assert "UTF-8" in str(error)


@NO_DB
@given(name=IDENTIFIER, value=safe_text)
def test_given_an_identifier_as_header_or_variable_name_when_checked_then_accepted(
    name: str, value: str
) -> None:
    assert check_key(name) == name
    assert check_fields({name: value}) == {name: value}
    assert channel_variable(name, value) == f"{name}={value}"


NOT_IN_A_NAME = st.sampled_from(
    [":", " ", "\t", "\r", "\n", "\0", "=", ".", "/", "$", "é", "\u2028"]
)
bad_names = (
    st.builds(lambda a, c, b: a + c + b, IDENTIFIER, NOT_IN_A_NAME, st.text(max_size=10))
    | st.builds(lambda c, a: c + a, st.sampled_from("0123456789_-( "), IDENTIFIER)
    | st.just("")
    | st.from_regex(r"[A-Za-z][A-Za-z0-9_]{80,120}", fullmatch=True)
)


@NO_DB
@given(name=bad_names)
@example(name="CallerID: Eve\r\nAction")
@example(name="CallerID\n")  # a regex "$" matches before a trailing newline
@example(name="OUTBOUND_ATTEMPT_ID=evil,X")
def test_given_a_name_that_is_not_an_identifier_when_checked_then_refused(name: str) -> None:
    refused(check_key, name)
    refused(check_fields, {name: "value"})
    refused(channel_variable, name, "value")
