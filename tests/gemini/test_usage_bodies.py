"""Usage is read from a JSON body in any encoding JSON allows, split anywhere."""

from __future__ import annotations

import codecs

import pytest

from quotaflow.gemini import BodyScanner, StreamScanner, Usage

TEXT = '{"usageMetadata": {"promptTokenCount": 5, "totalTokenCount": "7", "x": "\\u00e9"}}'
EXPECTED = Usage(input_tokens=5, total_tokens=7)


@pytest.mark.parametrize(
    "body",
    [
        TEXT.encode(),
        codecs.BOM_UTF8 + TEXT.encode(),
        TEXT.encode("utf-16"),
        TEXT.encode("utf-16-le"),
        TEXT.encode("utf-16-be"),
        TEXT.encode("utf-32"),
        TEXT.encode("utf-32-le"),
        b"  \n" + TEXT.encode() + b"\n",
        f"[{TEXT}, {TEXT.replace('5', '3')}]".encode(),
    ],
)
def test_usage_in_every_json_encoding(body: bytes) -> None:
    expected = Usage(input_tokens=3, total_tokens=7) if body.startswith(b"[") else EXPECTED
    for cut in range(0, len(body) + 1, 7):
        scanner = BodyScanner()
        scanner.feed(body[:cut])
        scanner.feed(body[cut:])
        assert scanner.usage() == expected


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"a": 1} x', b"{\xff}", TEXT.encode()[:-1], b'{"usageMetadata": 5}'],
)
def test_no_usage_from_a_broken_or_bare_body(body: bytes) -> None:
    scanner = BodyScanner()
    scanner.feed(body)
    assert scanner.usage() is None


def test_counts_that_are_not_counts_read_as_zero() -> None:
    scanner = BodyScanner()
    scanner.feed(
        b'{"usageMetadata": {"promptTokenCount": -4, "candidatesTokenCount": true, '
        b'"thoughtsTokenCount": 2.5, "cachedContentTokenCount": "x", "totalTokenCount": 9}}'
    )
    assert scanner.usage() == Usage(total_tokens=9)


def test_a_stream_event_in_utf8_with_escapes() -> None:
    s = StreamScanner()
    s.feed(b'data: {"usageMetadata": {"promptTokenCount": 4, "t": "\\u00e9\xc3\xa9"}}\n\n')
    assert s.usage() == Usage(input_tokens=4)
