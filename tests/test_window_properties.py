"""Properties (a)-(d) of the default rule, with hypothesis, on virtual time.

(a) never more than the limit in ANY window of the period, whatever the arrivals, weights,
    latencies, settles (refunds) and cancels;
(b) a full burst into an empty window;
(c) at least 99% of the limit under sustained load;
(d) memory per bucket bounded by a constant whatever the volume.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from quotaflow.limits import RPM, TPM, Limit, Rolling
from quotaflow.scheduler.buckets import WindowBucket
from tests._sim import Arrival, max_window, simulate

PERIOD = 1.0
RPM_LIMIT = 10
TPM_LIMIT = 1_000

arrival = st.builds(
    Arrival,
    t=st.floats(0, 5 * PERIOD),
    tokens=st.integers(0, TPM_LIMIT),
    priority=st.integers(0, 2),
    latency=st.floats(0, 0.3 * PERIOD),
    duration=st.floats(0, 0.5 * PERIOD),
    actual_ratio=st.floats(0, 1),
    release=st.booleans(),
    cancel_after=st.none() | st.floats(0, PERIOD),
)


@settings(max_examples=300, deadline=None)
@given(arrivals=st.lists(arrival, max_size=80), seed=st.integers(0, 10**6))
def test_no_window_ever_exceeds_the_limit(arrivals: list[Arrival], seed: int) -> None:
    limits = [RPM(RPM_LIMIT, PERIOD), TPM(TPM_LIMIT, PERIOD)]
    res = simulate(limits, arrivals, until=50 * PERIOD, seed=seed)
    assert max_window(res.counted, PERIOD, 1) <= RPM_LIMIT
    assert max_window(res.counted, PERIOD, 2) <= TPM_LIMIT
    # nothing lost: everything granted was released, settled or is still running
    state = res.state
    assert state is not None
    assert not state.leases, "every lease ended by the end of the run"
    for bucket in state.buckets.values():
        assert bucket.in_flight == 0


@settings(max_examples=100, deadline=None)
@given(
    weights=st.lists(st.integers(1, 200), min_size=1, max_size=40),
    start=st.floats(0, 1000),
)
def test_full_burst_into_an_empty_window(weights: list[int], start: float) -> None:
    limit = sum(weights)
    arrivals = [Arrival(t=start, tokens=w) for w in weights]
    res = simulate([TPM(limit, PERIOD)], arrivals, until=start + PERIOD / 2)
    assert len(res.grants) == len(weights)
    assert all(t == start for t, _, _ in res.grants), "all granted at once, no waiting"


@settings(max_examples=30, deadline=None)
@given(
    limit=st.integers(5, 60),
    weight=st.integers(1, 5),
    slots=st.sampled_from([100, 600]),
)
def test_sustained_load_uses_at_least_99_percent(limit: int, weight: int, slots: int) -> None:
    periods = 30
    tpm = Limit("tpm", limit * weight, PERIOD, "input_tokens", Rolling(slots))
    n = periods * limit + 50
    arrivals = [Arrival(t=0.0, tokens=weight) for _ in range(n)]
    res = simulate([tpm], arrivals, until=periods * PERIOD)
    granted_tokens = len([g for g in res.grants if g[0] < periods * PERIOD]) * weight
    allowed = periods * limit * weight
    assert granted_tokens >= 0.99 * allowed
    assert max_window(res.counted, PERIOD, 2) <= limit * weight


@settings(max_examples=50, deadline=None)
@given(
    times=st.lists(st.floats(0, 1e4), min_size=1, max_size=2000),
    slots=st.integers(1, 700),
)
def test_memory_per_bucket_is_bounded(times: list[float], slots: int) -> None:
    bucket = WindowBucket(capacity=10**9, period=60.0, slots=slots)
    for t in sorted(times):
        bucket.take(3, t)
        bucket.anchor(3, t, t)
        bucket.earliest(1, t)
        assert bucket.slot_count() <= slots + 2


def test_an_amount_is_held_one_period_and_at_most_one_slot_more() -> None:
    b = WindowBucket(capacity=1, period=60.0, slots=60)
    b.take(1, 0.0)
    b.anchor(1, 0.0, 0.0)
    # held until the end of its slot plus one period, never less than one period
    assert b.earliest(1, 59.999) >= 60.0
    assert b.earliest(1, 61.0) == 61.0
