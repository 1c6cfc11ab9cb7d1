"""Classifying a request again gives what classifying it the first time gave: the routes and
canonical forms kept between calls never change a result, and the body still counts where it
says part of the call."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from quotaflow.gemini import _canonical, _classify, classify
from quotaflow.gemini._canonical import canonical_request

BASE = "https://generativelanguage.googleapis.com"


def _fresh(method: str, url: str, body: Any = None, headers: Any = None) -> Any:
    _classify._static.cache_clear()
    _canonical._cached.cache_clear()
    _canonical._path.cache_clear()
    return classify(method, url, body, headers=headers)


def test_body_dependent_routes_follow_each_body() -> None:
    url = f"{BASE}/v1beta/models/text-embedding-004:batchEmbedContents"
    for n in (3, 5, 1, 4):
        body = {"requests": [{"content": {"parts": [{"text": "x"}]}}] * n}
        assert classify("POST", url, body).requests == n
    chat = f"{BASE}/v1beta/openai/chat/completions"
    for model in ("gemini-2.5-flash", "gemini-2.5-pro"):
        assert classify("POST", chat, {"model": model}).model == model
    assert classify("POST", chat, {"model": "x", "stream": True}).streaming
    assert not classify("POST", chat, {"model": "x"}).streaming
    interactions = f"{BASE}/v1beta/interactions"
    assert classify("POST", interactions, {"model": "gemini-2.5-flash"}).metered
    assert not classify("POST", interactions, {}).metered
    models = f"{BASE}/v1beta/openai/models"
    assert classify("GET", models, {}).area == "content"


def test_a_method_override_counts_on_a_url_seen_before() -> None:
    url = f"{BASE}/v1beta/files/abc"
    assert classify("GET", url).problem is None
    assert classify("GET", url, headers={"X-HTTP-Method-Override": "DELETE"}).problem
    assert classify("GET", url, headers={"x-http-method-override": "get"}).problem is None
    assert classify("GET", url).problem is None
    # the query's override wins over the header's, as it does uncached
    q = f"{url}?$httpMethod=GET"
    assert classify("GET", q, headers={"X-HTTP-Method-Override": "DELETE"}).problem is None
    assert classify("GET", f"{url}?%24httpMethod=DELETE").problem
    bad = f"{BASE}/v1beta/files/%2e%2e/abc"
    assert classify("GET", bad, headers={"X-HTTP-Method-Override": "DELETE"}).problem == (
        "a dot segment"
    )


def test_the_query_is_read_each_time() -> None:
    url = f"{BASE}/v1beta/models/gemini-2.5-flash:generateContent"
    assert not classify("POST", url).streaming
    assert classify("POST", f"{url}?alt=sse").streaming
    assert classify("POST", f"{url}?%24ALT=SSE&key=k").streaming
    assert not classify("POST", url).streaming
    assert canonical_request("POST", f"{url}?key=secret").param("key") == "secret"
    assert canonical_request("POST", url).param("key") is None


_PIECES = [*"abcAZ09-_.:~%2eEfF5cC@$ \u200b", "%2e", "%2E", "%2f", "%5c", "%25", "%00"]
_SEGMENT = st.lists(st.sampled_from(_PIECES), max_size=6).map("".join)
_PATHS = st.lists(_SEGMENT, min_size=0, max_size=6).map("/".join)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "post", "POST", "DELETE", "PATCH"]),
    prefix=st.sampled_from(
        ["/v1beta/", "/v1/", "/upload/v1beta/", "/v1beta/models/", "/v1beta/openai/", "/", ""]
    ),
    path=_PATHS,
    action=st.sampled_from(["", ":generateContent", ":batchEmbedContents", ":countTokens"]),
    query=st.sampled_from(
        [
            "",
            "?",
            "?alt=sse",
            "?key=k",
            "?$httpMethod=GET",
            "?%24httpMethod=delete&alt=sse",
            "#frag",
            "?alt=s\tse",
            "?k=a@b",
            "?a=1#f?alt=sse",
            "?alt=sse?alt=json",
            "?%ZZ=%FF&=x&&y",
        ]
    ),
    host=st.sampled_from([BASE, "", "https://user@host", " \x01https://h", "https://h\t"]),
    body=st.sampled_from([None, {}, {"model": "m", "requests": [{}, {}]}, {"stream": True}]),
    override=st.sampled_from([None, {}, {"X-HTTP-Method-Override": "DELETE"}]),
)
def test_cached_classification_equals_a_fresh_one(
    method: str,
    prefix: str,
    path: str,
    action: str,
    query: str,
    host: str,
    body: Any,
    override: Any,
) -> None:
    url = f"{host}{prefix}{path}{action}{query}"
    fresh = _fresh(method, url, body, override)
    classify(method, url, None, headers=None)  # something else kept in between
    assert classify(method, url, body, headers=override) == fresh
    assert classify(method, url, body, headers=override) == fresh
    assert canonical_request(method, url, override) == canonical_request(method, url, override)
    # the same as a request split by urllib each time
    assert canonical_request(method, url) == _canonical._canonical(method, url)
