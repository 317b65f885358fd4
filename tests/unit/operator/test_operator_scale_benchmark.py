"""The in-process operator scale benchmark keeps working (a small size; no timing asserts)."""

from __future__ import annotations

from benchmarks.operator_scale import render, run_scale


async def test_small_run_feeds_every_phase_and_writes_what_it_should() -> None:
    result = await run_scale(pods=60, connectionstats=3, batch=20, settle=0.2)
    assert [phase.name for phase in result.phases] == [
        "start-up: pod ADDED",
        "first document per pod",
        "steady: documents",
        "trickle: documents at 1000/s",
        "churn: pod MODIFIED",
        "churn: pod DELETED",
    ]
    assert [phase.events for phase in result.phases] == [60, 60, 60, 6, 6, 1]
    assert all(phase.rounds >= 1 for phase in result.phases[:2])
    assert result.condition_writes == 60  # one per pod; Ready flips change no decision
    assert 3 <= result.status_writes <= 3 * 5
    assert 0 < result.status_bytes < 64 * 1024
    assert "| 60 | 3 | steady: documents | 60 |" in render([result])
