"""The precedence rule as a pure function, and the property the issue asks for: any interleaving
of any reports ends on the same fields as applying them in event order."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from sfsync.domain.precedence import Action, Status, decide, known_later, merge, strongest, wins

T0 = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
LABELS = {"Sending": False, "Submitted": False, "Scheduled": False, "Unknown": False,
          "Delivered": True, "Failed": True, "Rejected": True, "Stopped": True}


def status(label: str, code: str | None = None, minute: int | None = 0, received: int | None = None,
           rid: str = "r") -> Status:
    def t(m: int | None) -> dt.datetime | None:
        return None if m is None else T0 + dt.timedelta(minutes=m)

    return Status(label, code, LABELS[label], t(minute), t(received), rid)


def test_final_is_never_replaced_by_non_final_even_if_later() -> None:
    assert not wins(status("Delivered", "220", 1), status("Submitted", "210", 9))
    assert wins(status("Submitted", "210", 9), status("Delivered", "220", 1))


def test_later_event_wins_between_equals() -> None:
    assert wins(status("Sending", "200", 1), status("Submitted", "210", 2))
    assert not wins(status("Submitted", "210", 2), status("Sending", "200", 1))
    assert wins(status("Failed", "400", 1), status("Delivered", "220", 2))


def test_date_received_breaks_a_submitted_date_tie_then_the_code() -> None:
    assert wins(status("Submitted", "210", 1, received=1), status("Sending", "200", 1, received=2))
    assert wins(status("Delivered", None, 1, 1, "b"), status("Delivered", "220", 1, 1, "a"))


def test_unknown_current_time_means_arrival_order() -> None:
    assert wins(status("Submitted", "210", None), status("Sending", "200", 1))
    assert not wins(status("Delivered", "220", None), status("Sending", "200", 1))


def test_an_untimed_report_without_code_of_the_same_label_says_nothing_new() -> None:
    # What `GET /v1/messages/{id}` gives (backfill --from-salesforce): a status, no code, no time.
    looked_up = status("Submitted", None, None)
    assert decide(status("Submitted", "211", 4), looked_up) is Action.STALE  # the code stays
    assert decide(status("Submitted", None, 4), looked_up) is Action.STALE  # and the known time
    assert decide(status("Sending", "200", 4), looked_up) is Action.WRITE  # a new label still wins
    assert decide(status("Submitted", "211", 4), status("Delivered", None, None)) is Action.WRITE


def test_a_report_without_code_never_erases_the_code_of_its_label() -> None:
    # A polled report (a time, no code) after the pushed copy or a code written by someone else.
    for current in (status("Delivered", "221", 1), status("Delivered", "221", None)):
        incoming = status("Delivered", None, 3)
        assert decide(current, incoming) is Action.UNCHANGED
        kept = merge(current, incoming)
        assert (kept.label, kept.code, kept.event_time) == ("Delivered", "221", T0 + dt.timedelta(minutes=3))
    assert decide(status("Submitted", "210", 1), status("Delivered", None, 3)) is Action.WRITE  # a new label


def test_decide() -> None:
    assert decide(None, status("Sending")) is Action.WRITE
    assert decide(status("Delivered", "220", 1), status("Delivered", "220", 2)) is Action.UNCHANGED
    assert decide(status("Delivered", "220", 2), status("Submitted", "210", 3)) is Action.STALE
    assert decide(status("Delivered", "220", 1), status("Delivered", "221", 2)) is Action.WRITE


reports = st.lists(
    st.builds(
        lambda label, code, minute, received: (label, code, minute, received),
        st.sampled_from(sorted(LABELS)), st.sampled_from([None, "200", "210", "220", "400", "999"]),
        st.integers(0, 5), st.one_of(st.none(), st.integers(0, 5)),
    ),
    min_size=1, max_size=8,
)


@given(reports=reports, data=st.data())
def test_any_interleaving_ends_as_event_order(reports: list[tuple[str, str | None, int, int | None]],
                                              data: st.DataObject) -> None:
    statuses = [status(label, code, minute, received, rid=f"r{i:02}")
                for i, (label, code, minute, received) in enumerate(reports)]
    arrival = data.draw(st.permutations(statuses))

    def apply(sequence: list[Status]) -> tuple[str, str | None]:
        current: Status | None = None
        for incoming in sequence:
            if decide(current, incoming) is not Action.STALE:
                current = merge(current, incoming)  # a code-less report keeps the code of its label
        assert current is not None
        return current.label, current.code

    def event_key(s: Status) -> tuple[dt.datetime, dt.datetime, bool, str]:
        return (s.event_time or T0, s.received_time or T0, s.code is not None, s.tiebreak)

    in_event_order = apply(sorted(statuses, key=event_key))
    arrived = apply(list(arrival))
    assert arrived[0] == in_event_order[0]  # the label: always the same
    # The code too, except that a code-less winner keeps a code its label had before it in arrival
    # order (a code-less report never erases the code of its label): a code some report of that label carried.
    label_codes = {s.code for s in statuses if s.label == arrived[0]}
    assert arrived[1] == in_event_order[1] or {arrived[1], in_event_order[1]} <= label_codes | {None}
    assert (strongest(list(arrival)).label, strongest(list(arrival)).code) == arrived
    if any(s.final for s in statuses):
        assert LABELS[in_event_order[0]]  # a final status, once seen, is where it ends


def test_known_later_moves_on_only_to_a_later_known_time() -> None:
    held = status("Failed", "400", minute=0, received=1)
    assert known_later(held, status("Failed", "400", minute=2))
    assert known_later(held, status("Failed", "400", minute=0, received=2))  # same event, received later
    assert not known_later(held, status("Failed", "400", minute=0, received=1))
    assert not known_later(held, status("Failed", "400", minute=-1))
    assert not known_later(held, status("Failed", "400", minute=None))  # no time: never erases a known one
    assert known_later(status("Failed", "400", minute=None), status("Failed", "400", minute=3))
