"""The alert rules (sluice.alerts.rules): when a threshold, an overspend, an anomaly or a runway alert is
due, with integer money and one key per subject and period (the unit of deduplication)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from sluice.alerts.rules import (
    ANOMALY,
    HEALTH,
    PROJECTED,
    RUNWAY,
    THRESHOLD,
    Allowance,
    credit_runway,
    ejected,
    fallback_share,
    last_deployment,
    projected_end,
    projected_overspend,
    reaches_cap_at,
    runway_days,
    spend_anomaly,
    threshold_findings,
    thresholds_reached,
)
from sluice.limits.spec import Limit

USD_DAY = Limit("usd", "day", 10_000_000_000)  # $10 a day, in nano-dollars
DAY_US = 86_400_000_000
START = 1_795_564_800_000_000  # 2026-11-25T00:00:00Z


def test_thresholds_reached_are_those_at_or_below_the_spend() -> None:
    cap = 10_000_000_000
    assert thresholds_reached(4_999_999_999, cap, (50, 80, 95, 100)) == []
    assert thresholds_reached(5_000_000_000, cap, (50, 80, 95, 100)) == [50]
    assert thresholds_reached(9_600_000_000, cap, (50, 80, 95, 100)) == [50, 80, 95]
    assert thresholds_reached(12_000_000_000, cap, (100, 50)) == [50, 100]
    assert thresholds_reached(5, 0, (50,)) == []  # no cap, nothing to alert on


def test_a_refusal_by_the_cap_is_its_100_percent_moment() -> None:
    """Reservations refuse a request before spend touches the cap: that refusal is when 100 % is reached."""
    cap = 10_000_000_000
    assert thresholds_reached(9_000_000_000, cap, (50, 80, 95, 100), refused=True) == [50, 80, 100]
    assert thresholds_reached(0, cap, (100,), refused=True) == [100]
    assert thresholds_reached(9_600_000_000, cap, (50, 80, 95), refused=True) == [50, 80, 95]  # not asked


@given(
    st.lists(st.integers(0, 3_000_000_000), min_size=1, max_size=40),
    st.integers(1, 20_000_000_000),
)
def test_rising_spend_reaches_each_threshold_once_in_order(steps: list[int], cap: int) -> None:
    """Asked after every step, the new thresholds form one increasing sequence: each is reached once."""
    spent, seen = 0, []
    for step in steps:
        spent += step
        seen += [t for t in thresholds_reached(spent, cap, (50, 80, 95, 100)) if t not in seen]
    assert seen == [t for t in (50, 80, 95, 100) if spent * 100 >= t * cap]


def test_threshold_findings_carry_scope_numbers_and_a_key_per_period() -> None:
    found = threshold_findings("key:k1", "key 'app'", USD_DAY, "d2026-11-25", 8_500_000_000)
    assert [f.facts["threshold_pct"] for f in found] == [50, 80]
    first = found[0]
    assert first.rule == THRESHOLD
    assert first.key == "threshold:key:k1:usd/day:d2026-11-25:50"
    assert first.facts == {
        "metric": "usd",
        "period": "day",
        "window": "d2026-11-25",
        "threshold_pct": 50,
        "spent": 8_500_000_000,
        "cap": 10_000_000_000,
    }
    tomorrow = threshold_findings("key:k1", "key 'app'", USD_DAY, "d2026-11-26", 5_000_000_000)
    assert tomorrow[0].key != first.key  # a new period alerts again


def test_projection_is_integer_and_rounds_up() -> None:
    assert projected_end(1, START, START + 3, START + 10) == 4  # 3.33… → 4
    assert projected_end(0, START, START + 3, START + 10) == 0
    assert projected_end(7, START, START, START + 10) == 7  # no time elapsed: no rate yet
    assert reaches_cap_at(0, 10, START, START + 5) is None
    assert reaches_cap_at(5, 10, START, START + 5) == START + 10
    assert reaches_cap_at(12, 10, START, START + 5) == START + 5  # already there


def test_projected_overspend_fires_before_the_cap_is_reached() -> None:
    # a quarter of the day gone, $4 of $10 spent: at this rate $16 by midnight, the cap at 15:00
    now = START + DAY_US // 4
    found = projected_overspend(
        "key:k1", "key 'app'", USD_DAY, "d2026-11-25", 4_000_000_000, START, now, START + DAY_US
    )
    assert found is not None and found.rule == PROJECTED
    assert found.key == "projected_overspend:key:k1:usd/day:d2026-11-25"
    assert found.facts["projected"] == 16_000_000_000
    assert found.facts["cap_reached_at_us"] == START + 15 * 3_600_000_000
    assert found.facts["spent"] == 4_000_000_000 < found.facts["cap"]  # type: ignore[operator]


def test_no_projection_when_on_course_too_early_or_already_over() -> None:
    half = START + DAY_US // 2
    on_course = projected_overspend("key:k1", "k", USD_DAY, "d", 4_000_000_000, START, half, START + DAY_US)
    assert on_course is None  # $8 by midnight: under the cap
    early = START + DAY_US // 100  # 1 % of the day: a rate means little yet
    assert (
        projected_overspend("key:k1", "k", USD_DAY, "d", 1_000_000_000, START, early, START + DAY_US) is None
    )
    over = projected_overspend("key:k1", "k", USD_DAY, "d", 10_000_000_000, START, half, START + DAY_US)
    assert over is None  # the cap is reached: the threshold rule has said so
    share = Decimal("0.001")
    assert projected_overspend(
        "key:k1", "k", USD_DAY, "d", 1_000_000_000, START, early, START + DAY_US, min_elapsed_share=share
    )


def test_a_runaway_hour_is_an_anomaly_and_a_busy_normal_one_is_not() -> None:
    baseline = [1_000_000_000, 2_000_000_000, 1_500_000_000]  # $1.50 an hour on average
    found = spend_anomaly("key:k1", "key 'agent'", "h2026-11-25T13", 20_000_000_000, baseline)
    assert found is not None and found.rule == ANOMALY
    assert found.key == "spend_anomaly:key:k1:h2026-11-25T13"
    assert found.facts["baseline_per_window"] == 1_500_000_000
    assert "last hour" in found.summary
    assert spend_anomaly("key:k1", "k", "h", 7_000_000_000, baseline) is None  # under 5 times the mean
    assert spend_anomaly("key:k1", "k", "h", 500_000_000, []) is None  # under the $1 floor
    assert spend_anomaly("key:k1", "k", "h", 2_000_000_000, []) is not None  # a new scope's first dollars


def test_runway_counts_whole_days_and_expiry() -> None:
    assert runway_days(10, 3) == 3
    assert runway_days(-5, 3) == 0
    assert runway_days(10, 0) is None
    found = credit_runway("groq", 5_000_000_000, 1_000_000_000, 30, "d2026-11-25")
    assert found is not None and found.rule == RUNWAY and found.facts["days_of_credit"] == 5
    assert found.scope == "provider:groq" and found.key == "credit_runway:provider:groq:d2026-11-25"
    expiring = credit_runway("trial", None, 0, 3, "d2026-11-25")
    assert expiring is not None and "expires in 3 day(s)" in expiring.summary
    assert "remaining" not in expiring.facts
    assert credit_runway("groq", 50_000_000_000, 1_000_000_000, 30, "d") is None  # 50 days left
    assert credit_runway("groq", 50_000_000_000, 0, None, "d") is None  # nothing burns


def test_a_daily_request_allowance_mostly_used_and_spent_credit_are_runway_alerts() -> None:
    used = credit_runway("groq", None, 0, None, "d", allowance=Allowance(1000, 850))
    assert used is not None and "850 of 1000 daily requests used" in used.summary
    assert used.facts["requests_today"] == 850
    assert credit_runway("groq", None, 0, None, "d", allowance=Allowance(1000, 799)) is None
    gone = credit_runway("groq", 0, 0, None, "d")
    assert gone is not None and "used up" in gone.summary


def test_health_findings_are_keyed_per_subject_and_bucket() -> None:
    first = ejected("p/m", ["chat"], 5.0, "b1")
    assert first.rule == HEALTH and first.key == "provider_health:ejected:p/m:b1"
    assert first.scope == "deployment:p/m" and first.facts["aliases"] == "chat"
    assert ejected("p/m", ["chat"], 10.0, "b2").key != first.key
    last = last_deployment("chat", "q/m", "b1")
    assert last.scope == "alias:chat" and "last deployment" in last.summary
    served = {"p/m": 5, "q/m": 15}
    share = fallback_share("chat", "p/m", served, "b1")
    assert share is not None and share.facts["fallback"] == 15 and share.facts["requests"] == 20
    assert fallback_share("chat", "p/m", {"p/m": 10, "q/m": 10}, "b1") is None  # half is not most
    assert fallback_share("chat", "p/m", {"q/m": 19}, "b1") is None  # too few requests to judge
