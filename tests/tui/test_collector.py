"""When the TUI runs its full garbage collections: while the user rests, never mid-typing for long."""

from __future__ import annotations

import gc

from mlfleet.tui.collector import NEVER, IdleCollector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_collection_waits_for_a_pause_in_the_typing_but_not_forever() -> None:
    clock = Clock()
    collector = IdleCollector(every_s=30, quiet_s=1, latest_s=120, clock=clock)
    clock.now += 10
    assert not collector.collect_if_due()  # too soon after the last one
    clock.now += 25
    collector.saw_input()
    assert not collector.collect_if_due()  # due, but the user just pressed a key
    clock.now += 1.5
    assert collector.collect_if_due()  # the user rested a moment
    assert not collector.collect_if_due()
    last, collected_after = clock.now, []
    for _ in range(130):  # someone holds j down for two minutes
        clock.now += 1
        collector.saw_input()
        if collector.collect_if_due():
            collected_after.append(clock.now - last)
    assert collected_after == [120]  # once the longest wait was over, typing or not


def test_taking_over_freezes_the_imports_and_stops_automatic_full_collections() -> None:
    before = gc.get_threshold()
    try:
        IdleCollector().take_over()
        assert gc.get_threshold()[2] == NEVER and gc.get_threshold()[:2] == before[:2]
        assert gc.get_freeze_count() > 1000  # Textual, Rich and mlfleet's modules
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
