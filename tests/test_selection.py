"""Result selection on a fake clock, with libosmo-mslookup's semantics."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dgsm_integrations.mslookup import Answer, Endpoint, Outcome, Query, Selection, Timing

Q = Query.parse("sip.voice.1001.msisdn")


def ans(age: int, host: str = "10.0.0.1") -> Answer:
    return Answer(0, Q, age, v4=Endpoint(host, 5060))


@dataclass
class Step:
    at: float
    answer: Answer | None = None  # None: just advance the clock


def run(timing: Timing, steps: list[Step]) -> list[tuple[float, str, bool, int | None, str]]:
    """Drive a Selection like a driver would: wake at deadlines, feed answers in order."""
    sel = Selection(Q, timing, start=0.0)
    out: list[tuple[float, str, bool, int | None, str]] = []

    def record(now: float, results: list) -> None:  # type: ignore[type-arg]
        for r in results:
            host = r.v4.host if r.v4 else "-"
            out.append((round(now, 3), r.outcome.value, r.last, r.age, host))

    for step in [*steps, Step(1e9)]:
        while sel.deadline is not None and sel.deadline <= step.at:
            now = sel.deadline
            record(now, sel.tick(now))
        if step.answer is not None:
            record(step.at, sel.feed(step.answer, step.at, site="s"))
    return out


CASES = {
    "youngest wins at min_delay": (
        Timing(1.0, 1.0),
        [Step(0.1, ans(30, "10.0.0.1")), Step(0.2, ans(5, "10.0.0.2")),
         Step(0.3, ans(9, "10.0.0.3"))],
        [(1.0, "found", True, 5, "10.0.0.2")],
    ),
    "tie: first wins": (
        Timing(1.0, 1.0),
        [Step(0.1, ans(5, "10.0.0.1")), Step(0.2, ans(5, "10.0.0.2"))],
        [(1.0, "found", True, 5, "10.0.0.1")],
    ),
    "age 0 ends at once": (
        Timing(1.0, 1.0),
        [Step(0.1, ans(7)), Step(0.25, ans(0, "10.0.0.9")), Step(0.3, ans(0, "10.0.0.8"))],
        [(0.25, "found", True, 0, "10.0.0.9")],
    ),
    "nothing: not found at timeout": (
        Timing(1.0, 1.0), [], [(1.0, "not-found", True, None, "-")],
    ),
    "answer after min_delay ends with timeout == min_delay": (
        Timing(0.5, 0.5), [Step(0.7, ans(3))], [(0.5, "not-found", True, None, "-")],
    ),
    "stream: best at min_delay, younger later, none at timeout": (
        Timing(1.0, 3.0),
        [Step(0.5, ans(20, "10.0.0.1")), Step(1.5, ans(30, "10.0.0.2")),
         Step(2.0, ans(10, "10.0.0.3"))],
        [(1.0, "found", False, 20, "10.0.0.1"), (2.0, "found", False, 10, "10.0.0.3"),
         (3.0, "none", True, 10, "10.0.0.3")],
    ),
    "stream: first answer after min_delay delivered at once": (
        Timing(1.0, 3.0), [Step(2.0, ans(4))],
        [(2.0, "found", False, 4, "10.0.0.1"), (3.0, "none", True, 4, "10.0.0.1")],
    ),
    "stream: nothing at all": (Timing(1.0, 3.0), [], [(3.0, "not-found", True, None, "-")]),
    "min_delay 0 streams every improvement": (
        Timing(0.0, 2.0), [Step(0.1, ans(9)), Step(0.2, ans(12)), Step(0.3, ans(4))],
        [(0.1, "found", False, 9, "10.0.0.1"), (0.3, "found", False, 4, "10.0.0.1"),
         (2.0, "none", True, 4, "10.0.0.1")],
    ),
    "stream: age 0 after min_delay ends it": (
        Timing(1.0, 3.0), [Step(0.5, ans(6)), Step(1.2, ans(0, "10.0.0.7"))],
        [(1.0, "found", False, 6, "10.0.0.1"), (1.2, "found", True, 0, "10.0.0.7")],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_selection(case: str) -> None:
    timing, steps, expected = CASES[case]
    assert run(timing, steps) == expected


def test_nothing_after_done_and_cancel() -> None:
    sel = Selection(Q, Timing(1.0, 1.0), start=10.0)
    assert sel.deadline == 11.0
    assert sel.tick(10.5) == []
    assert sel.feed(ans(0), 10.6)[0].elapsed == pytest.approx(0.6)
    assert sel.deadline is None
    assert sel.feed(ans(0), 10.7) == [] and sel.tick(20.0) == []
    sel2 = Selection(Q, Timing(1.0, 1.0), start=0.0)
    r = sel2.cancel(0.3, "closing")
    assert r.outcome is Outcome.ERROR and r.last and r.reason == "closing"
    assert sel2.deadline is None
