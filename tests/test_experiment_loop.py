"""The shared run loop: when it steps, evaluates, logs and ends a step."""

from __future__ import annotations

import pytest

from online_mas.experiment.loop import run_loop


class Recorder:
    """A step object that records the loop's calls; ``step`` flags batches listed in ``loud``."""

    def __init__(self, loud: tuple[int, ...] = (), stop_at: int | None = None) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.loud, self.stop_at = loud, stop_at

    def step(self, i: int, batch: object) -> dict[str, object]:
        self.calls.append(("step", i, batch))
        return {"event": "x"} if i in self.loud else {}

    def evaluate(self, done: int, at_segment_end: bool) -> dict[str, object]:
        self.calls.append(("evaluate", done, at_segment_end))
        return {"eval": done}

    def log(self, i: int, extras: dict[str, object]) -> dict[str, object]:
        self.calls.append(("log", i + 1, dict(extras)))
        return {}

    def end_step(self, done: int) -> None:
        self.calls.append(("end", done))
        if done == self.stop_at:
            raise KeyboardInterrupt


def test_calls_in_order_log_cadence_and_evaluation_extras() -> None:
    rec = Recorder(loud=(0,))
    run_loop(rec, enumerate("abcde"), total=5, log_every=3, eval_at={2, 5}, eval_every=4)
    assert rec.calls == [
        ("step", 0, "a"), ("log", 1, {"event": "x"}), ("end", 1),
        ("step", 1, "b"), ("evaluate", 2, True), ("log", 2, {"eval": 2}), ("end", 2),
        ("step", 2, "c"), ("log", 3, {}), ("end", 3),  # every log_every steps
        ("step", 3, "d"), ("evaluate", 4, False), ("log", 4, {"eval": 4}), ("end", 4),
        ("step", 4, "e"), ("evaluate", 5, True), ("log", 5, {"eval": 5}), ("end", 5),
    ]


def test_resumed_loop_counts_from_start_and_logs_the_last_step() -> None:
    rec = Recorder()
    run_loop(rec, [(3, "d"), (4, "e")], total=5, start=3, log_every=10)
    assert rec.calls == [("step", 3, "d"), ("end", 4), ("step", 4, "e"), ("log", 5, {}), ("end", 5)]


def test_an_exception_in_end_step_stops_the_loop() -> None:
    rec = Recorder(stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_loop(rec, enumerate("abcde"), total=5, log_every=10, progress=True, desc="t")
    assert rec.calls[-1] == ("end", 2) and len(rec.calls) == 4
