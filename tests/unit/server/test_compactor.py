"""AutoCompactor: etcd's periodic and revision auto-compaction rules on a fake clock.

The periodic cases replay etcd's v3compactor/periodic_test.go (TestPeriodicHourly,
TestPeriodicMinutes, TestPeriodicPause): there the store revision goes up by one
per check interval, and the expected compaction revisions are etcd's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from cluster.config import ConfigError
from cluster.server.compactor import AutoCompactor, parse_retention

H = 3600.0
TICK = 0.25  # exact in binary, so tick times add up without rounding


def drive(
    c: AutoCompactor,
    rev: Callable[[float], int],
    *,
    until: float,
    since: float = 0.0,
    tick: float = TICK,
    ok: Callable[[float, int], bool] = lambda t, r: True,
) -> list[tuple[float, int]]:
    """Tick the compactor like the member does, reporting each attempt at once."""
    out: list[tuple[float, int]] = []
    i = round(since / tick)
    while (t := i * tick) <= until:
        r = c.due(t, rev(t))
        if r is not None:
            out.append((t, r))
            c.result(r, ok(t, r), t)
        i += 1
    return out


def per_check(interval: float) -> Callable[[float], int]:
    """etcd's fakeRevGetter: one more revision per check interval, starting at 1."""
    return lambda t: 1 + int(t // interval)


def leader(mode: str, retention: str, now: float = 0.0) -> AutoCompactor:
    c = AutoCompactor(mode, retention)
    c.resume(now)
    return c


# --- flags -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "retention", "value"),
    [
        ("periodic", "1h", 3600 * 10**9),
        ("periodic", "30m", 1800 * 10**9),
        ("periodic", "90s", 90 * 10**9),
        ("periodic", "500ms", 500 * 10**6),
        ("periodic", "5", 5 * 3600 * 10**9),  # a bare integer is hours
        ("periodic", "0", 0),
        ("periodic", "0m", 0),
        ("revision", "1000", 1000),
        ("revision", "0", 0),
    ],
)
def test_parse_retention(mode: str, retention: str, value: int) -> None:
    assert parse_retention(mode, retention) == value
    assert AutoCompactor(mode, retention).enabled is (value > 0)


@pytest.mark.parametrize(
    ("mode", "retention", "flag"),
    [
        ("daily", "1h", "--auto-compaction-mode"),
        ("", "1", "--auto-compaction-mode"),
        ("periodic", "", "--auto-compaction-retention"),
        ("periodic", "1x", "--auto-compaction-retention"),
        ("periodic", "-1h", "--auto-compaction-retention"),
        ("periodic", "1.5h", "--auto-compaction-retention"),
        ("periodic", "1h\n", "--auto-compaction-retention"),
        ("periodic", "\u0661h", "--auto-compaction-retention"),  # ARABIC-INDIC DIGIT ONE
        ("revision", "1h", "--auto-compaction-retention"),
        ("revision", "-5", "--auto-compaction-retention"),
        ("revision", "\u00b2", "--auto-compaction-retention"),  # SUPERSCRIPT TWO: isdigit()
    ],
)
def test_bad_flags_raise_value_error_naming_the_flag(mode: str, retention: str, flag: str) -> None:
    with pytest.raises(ValueError, match=flag) as info:
        AutoCompactor(mode, retention)
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize(
    ("retention", "check", "compact", "window"),
    [
        ("10m", 60.0, 600.0, 11),  # under an hour: compact every R, check every R/10
        ("59m", 354.0, 3540.0, 11),
        ("1h", 360.0, 3600.0, 11),
        ("2h", 360.0, 3600.0, 21),  # over an hour: compact hourly, check every 6 minutes
        ("24h", 360.0, 3600.0, 241),
        ("5", 360.0, 3600.0, 51),
        ("5s", 0.5, 5.0, 11),
    ],
)
def test_periodic_intervals_follow_the_hour_over_ten_rule(
    retention: str, check: float, compact: float, window: int
) -> None:
    c = AutoCompactor("periodic", retention)
    assert (c.check_interval, c.compact_interval, c.window) == (check, compact, window)


def test_revision_mode_checks_every_five_minutes() -> None:
    assert AutoCompactor("revision", "100").check_interval == 300.0


@pytest.mark.parametrize(("mode", "retention"), [("periodic", "0"), ("revision", "0")])
def test_zero_retention_disables(mode: str, retention: str) -> None:
    c = leader(mode, retention)
    assert not c.enabled
    assert drive(c, lambda t: 1000 + int(t), until=3 * H, tick=1.0) == []


# --- periodic ----------------------------------------------------------------------------


def test_periodic_hourly_as_etcd() -> None:
    """R=2h: nothing for 2 hours, then revs[0]; afterwards hourly, the window moved 10 on."""
    c = leader("periodic", "2h")
    got = drive(c, per_check(360), until=5 * H)
    assert got == [(2 * H, 1), (3 * H, 10), (4 * H, 20), (5 * H, 30)]


def test_periodic_minutes_as_etcd() -> None:
    """R=5m: compact every 5 minutes, checking every 30 seconds."""
    c = leader("periodic", "5m")
    got = drive(c, per_check(30), until=1800)
    assert got == [(300.0, 1)] + [(300.0 * (i + 1), 10 * i) for i in range(1, 6)]


def test_periodic_never_compacts_history_younger_than_the_retention() -> None:
    """Member-like 100 ms ticks, one write a second: each compaction keeps R of history."""
    c = leader("periodic", "10m")
    got = drive(c, lambda t: 1 + int(t), until=2 * H, tick=0.125)
    assert got[0] == (600.0, 1)
    assert len(got) == 12
    for t, r in got:
        sampled_at = r - 1  # the time the compacted revision was current
        assert t - 600 - c.check_interval - 1 <= sampled_at <= t - 600
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(got)]
    assert all(600 <= g <= 600 + 1 for g in gaps)


def test_periodic_pause_keeps_sampling_and_resume_compacts_at_next_check() -> None:
    """etcd TestPeriodicPause: 3n paused intervals, resume, compact rev 1+2n+1 one later."""
    n = 11  # the window for 1h
    c = AutoCompactor("periodic", "1h")  # starts paused: not leader yet
    assert c.paused
    paused_until = 3 * n * 360.0
    assert drive(c, per_check(360), until=paused_until) == []
    assert c.samples == tuple(range(3 * n + 2 - n, 3 * n + 2))  # the last n of 1..3n+1
    c.resume(paused_until + TICK)
    got = drive(c, per_check(360), since=paused_until + TICK, until=paused_until + 360)
    assert got == [(paused_until + 360, 1 + 2 * n + 1)]


def test_periodic_leadership_lost_and_regained() -> None:
    c = leader("periodic", "1h")
    rev = per_check(360)
    assert drive(c, rev, until=H) == [(H, 1)]
    c.pause()
    assert drive(c, rev, since=H + TICK, until=4 * H) == []
    c.resume(4 * H + TICK)
    # last success was 3 hours ago: due at the very next check, with the window kept current
    got = drive(c, rev, since=4 * H + TICK, until=4 * H + 360)
    assert got == [(4 * H + 360, rev(4 * H + 360 - H - 360))]


def test_periodic_retries_a_failure_at_the_next_check() -> None:
    c = leader("periodic", "1h")
    fail_once = {2 * H}
    got = drive(c, per_check(360), until=3 * H + 360 + 1, ok=lambda t, r: t not in fail_once)
    # the 2h attempt fails; 6 minutes later it retries with the window moved on by one;
    # the hour to the next compaction counts from that success
    assert got == [(H, 1), (2 * H, 10), (2 * H + 360, 11), (3 * H + 360, 21)]


def test_periodic_first_failure_still_switches_to_the_compact_interval() -> None:
    """R=2h: an attempt, even failed, ends the initial wait (etcd sets baseInterval then)."""
    c = leader("periodic", "2h")
    got = drive(c, per_check(360), until=2 * H + 360, ok=lambda t, r: t != 2 * H)
    assert got == [(2 * H, 1), (2 * H + 360, 1)]  # window not yet full: same oldest sample


def test_periodic_idle_store_is_not_compacted_again() -> None:
    c = leader("periodic", "1h")

    def idle_then_busy(t: float) -> int:
        return 50 if t < 5 * H else 50 + int(t - 5 * H)

    got = drive(c, idle_then_busy, until=7 * H + 360, tick=1.0)
    assert got[0] == (H, 50)
    # nothing while idle (the window holds 50 only). Writes resume at 5h: the check then
    # still samples 50, the next (5h06) samples 410, compacted once it is the window's
    # oldest, R + one interval after it was taken
    assert got[1:] == [(6 * H + 720, 410)]


def test_periodic_never_goes_below_a_compaction_already_reported() -> None:
    c = leader("periodic", "1h")
    rev = per_check(360)
    c.result(100, True, 10.0)  # say, a manual compaction; nothing in flight: only recorded
    assert c.last_compacted == 100
    assert c.in_flight is None
    assert drive(c, rev, until=10 * H) == []  # window revisions stay <= 100 until then
    got = drive(c, rev, since=10 * H + TICK, until=12 * H)
    assert got and all(r > 100 for _, r in got)
    assert got[0][1] == 101


# --- attempts in flight ------------------------------------------------------------------


def test_nothing_new_while_an_attempt_is_in_flight_and_next_check_is_from_its_result() -> None:
    c = leader("revision", "10")
    assert c.due(300.0, 100) == 90
    assert c.in_flight == 90
    assert c.due(300.5, 200) is None
    assert c.due(900.0, 300) is None  # still in flight: no second proposal
    c.result(90, True, 1000.0)
    assert c.in_flight is None
    assert c.due(1299.9, 300) is None
    assert c.due(1300.0, 300) == 290


def test_result_for_an_unknown_failed_revision_is_ignored() -> None:
    c = leader("revision", "10")
    assert c.due(300.0, 100) == 90
    c.result(42, False, 301.0)
    assert c.in_flight == 90
    assert c.last_compacted == 0


def test_pause_abandons_the_attempt_in_flight() -> None:
    c = leader("revision", "10")
    assert c.due(300.0, 100) == 90
    c.pause()  # leadership lost: the proposal may never be applied or answered
    assert c.in_flight is None
    c.resume(310.0)
    assert c.due(310.0, 100) is None  # the timer restarts: one interval from here
    assert c.due(609.0, 100) is None
    assert c.due(610.0, 100) == 90  # the abandoned attempt had not succeeded
    c.result(90, True, 611.0)
    assert c.due(1000.0, 100) is None


def test_late_success_of_an_abandoned_attempt_prevents_repeating_it() -> None:
    c = leader("revision", "10")
    assert c.due(300.0, 100) == 90
    c.pause()
    c.result(90, True, 305.0)  # applied after all
    assert c.last_compacted == 90
    c.resume(306.0)
    assert c.due(306.0, 100) is None
    assert c.due(606.0, 100) is None  # 90 again: skipped
    assert c.due(906.0, 101) == 91


# --- revision ----------------------------------------------------------------------------


def test_revision_mode_compacts_current_minus_retention_every_five_minutes() -> None:
    c = leader("revision", "10")

    def rev(t: float) -> int:
        return 5 if t < 450 else 100 if t < 1000 else 150 if t < 1600 else 400

    got = drive(c, rev, until=2100, tick=1.0)
    # 300: 5-10 <= 0; 600: 90; 900: 90 again, skipped; 1200: 140; 1500: 140, skipped;
    # 1800: 390; 2100: 390, skipped
    assert got == [(600.0, 90), (1200.0, 140), (1800.0, 390)]


def test_revision_mode_retries_after_a_failure() -> None:
    c = leader("revision", "10")
    got = drive(c, lambda t: 100 + int(t // 300), until=1200, tick=1.0, ok=lambda t, r: t != 600)
    assert got == [(300.0, 91), (600.0, 92), (900.0, 93), (1200.0, 94)]
    assert c.last_compacted == 94


def test_revision_mode_failure_does_not_block_the_same_revision() -> None:
    c = leader("revision", "10")
    got = drive(c, lambda t: 100, until=1200, tick=1.0, ok=lambda t, r: t != 300)
    assert got == [(300.0, 90), (600.0, 90)]


def test_revision_mode_paused_does_nothing_and_resume_keeps_the_timer() -> None:
    c = AutoCompactor("revision", "10")
    assert drive(c, lambda t: 100, until=1000, tick=1.0) == []
    c.resume(1000.5)
    # checks stayed on the 300 s grid while paused (900, 1200, ...)
    assert drive(c, lambda t: 100, since=1001, until=1500, tick=1.0) == [(1200.0, 90)]


def test_revision_mode_does_not_go_backwards() -> None:
    c = leader("revision", "10")
    assert c.due(300.0, 100) == 90
    c.result(90, True, 300.0)
    assert c.due(600.0, 95) is None  # a lower current revision (say, a restored member)
    assert c.due(900.0, 101) == 91
