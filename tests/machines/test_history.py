"""The temperature ring buffer behind the machine page's graph (pure, with a fake clock)."""

from __future__ import annotations

from microfactory.runtime.history import TemperatureHistory


def status(t: float, actual: float, target: float | None = 200.0) -> dict[str, object]:
    return {"updated_at": t, "temperatures": {"T": {"actual": actual, "target": target}}}


def test_keeps_at_most_one_sample_a_second_and_only_the_last_minutes() -> None:
    now = [1000.0]
    history = TemperatureHistory(keep_s=60, every_s=1.0, clock=lambda: now[0])
    for i in range(10):  # ten updates in half a second: one sample
        history.record(1, status(1000.0 + i * 0.05, 20.0 + i))
    assert [s["temps"]["T"] for s in history.samples(1)] == [[20.0, 200.0]]

    for second in range(1, 120):
        now[0] = 1000.0 + second
        history.record(1, status(now[0], 20.0 + second, None))
    samples = history.samples(1)
    assert samples[0]["t"] >= now[0] - 60  # older samples were dropped
    assert samples[-1] == {"t": now[0], "temps": {"T": [139.0, None]}}
    assert len(samples) == 61


def test_statuses_without_temperatures_and_other_machines_stay_apart() -> None:
    history = TemperatureHistory(clock=lambda: 10.0)
    history.record(1, {"state": "idle", "temperatures": {}})  # a CNC mill: nothing to keep
    history.record(2, status(10.0, 25.0))
    assert history.samples(1) == []
    assert [s["temps"] for s in history.samples(2)] == [{"T": [25.0, 200.0]}]
    history.forget(2)
    assert history.samples(2) == []
