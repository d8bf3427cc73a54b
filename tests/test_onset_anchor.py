"""The anchor of a detection at the parameters saved before its change began (Page's estimate),
against seeded streams with a known change point; batch 1 and 64, lag 0 and 256, states, fallbacks."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import online_mas as om
from online_mas.onset import OnsetSnapshots

CHANGE = 3000  # first sample whose input mean has moved
LATEST = (CHANGE // 32 + 1) * 32  # the end of the detector's window that holds it (its resolution)


def test_scaled_cusum_run_length_is_pages_change_point_estimate() -> None:
    rng = random.Random(3)
    values = [rng.gauss(0.0, 1.0) for _ in range(500)] + [rng.gauss(3.0, 1.0) for _ in range(50)]
    cusum = om.ScaledCUSUM(threshold=8.0, mode="up")
    for i, v in enumerate(values):
        cusum.update(v)
        if cusum.drift_detected:
            start = i + 1 - cusum.run_length  # first value of the run that crossed
            break
    else:
        pytest.fail("no detection")
    assert 495 <= start <= 500 < i  # the run began at the change (or just before: noise)
    assert om.ScaledCUSUM(mode="down").run_length == 0


class _Clock(nn.Module):
    """One parameter that the test sets to the number of samples trained on, so an anchor says
    which moment's parameters it holds; the output does not depend on it (constant entropy)."""

    def __init__(self) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.zeros(1))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) * 0.0 + self.t * 0.0


def _run(batch: int, *, lag: int = 0, onset: bool = True, stop_at: int | None = None,
         state: dict[str, object] | None = None) -> tuple[om.OnlineMAS, list[float]]:
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(5000, 8, generator=g)
    xs[CHANGE:] += 1.5
    torch.manual_seed(0)
    model = _Clock()
    mas = om.OnlineMAS(model, lam=1.0, detector=om.default_detector(lag=lag),
                       anchor=om.StableAnchor(onset=onset))
    if state is not None:
        mas.load_state_dict(state)
    anchors = []
    start = 0 if state is None else int(state["step"]) * batch  # type: ignore[call-overload]
    for i in range(start, xs.shape[0], batch):
        if stop_at is not None and i >= stop_at:
            break
        with torch.no_grad():
            model.t.fill_(float(i + batch))  # "trained" on the samples up to this batch's end
        event = mas.observe(xs[i:i + batch])
        if event is not None and event.reason == "detector":
            anchors.append(float(mas.anchors["t"]))
            break  # the first detection is the change (false alarms are tested elsewhere)
    return mas, anchors


@pytest.mark.parametrize("batch", [1, 64])
def test_the_anchor_holds_the_parameters_from_just_before_the_change(batch: int) -> None:
    _, anchors = _run(batch)
    assert len(anchors) == 1
    # saved within the window that holds the change (the detector's resolution) or before it,
    # at most a few windows earlier
    assert CHANGE - 4 * 32 - batch <= anchors[0] < LATEST
    if batch > 1:
        _, slow = _run(batch, onset=False)  # the slow copy trails by about 640 samples
        assert slow[0] < CHANGE - 200


def test_with_a_lag_the_anchor_is_from_before_the_block_that_held_the_change() -> None:
    _, anchors = _run(32, lag=256)
    assert len(anchors) == 1
    assert CHANGE - 256 - 4 * 32 <= anchors[0] < LATEST


def test_a_state_saved_inside_an_open_run_gives_the_same_anchor_after_loading() -> None:
    _, whole = _run(32)
    stop = CHANGE + 64  # the change has opened a run, not yet detected
    mas, _ = _run(32, stop_at=stop)
    state = mas.state_dict()
    assert state["anchor_policy"]["onsets"]["onset"] is not None  # type: ignore[index]
    _, resumed = _run(32, state=state)
    assert resumed == whole


@pytest.mark.filterwarnings("ignore:consolidation at step 40 folds no importance")
def test_a_detector_that_reports_no_runs_anchors_at_the_slow_copy() -> None:
    class Every:  # river's contract, no run lengths: fires at the 40th call
        def __init__(self) -> None:
            self.n, self.drift_detected = 0, False

        def update(self, x: float) -> None:
            self.n += 1
            self.drift_detected = self.n == 40

    torch.manual_seed(0)
    model = _Clock()
    mas = om.OnlineMAS(model, lam=1.0, detector=Every())
    x = torch.randn(32, 8)
    for step in range(40):
        with torch.no_grad():
            model.t.fill_(float(step))
        event = mas.observe(x)
    assert event is not None and mas.trigger.runs is None
    assert float(mas.anchors["t"]) == float(mas.anchor_policy.source()["t"])  # type: ignore[union-attr]


def test_a_version_2_anchor_state_loads_without_snapshots() -> None:
    anchor = om.StableAnchor()
    state = anchor.state_dict()
    old = {k: v for k, v in state.items() if k not in ("onset", "onsets")}
    old["version"] = 2
    loaded = om.StableAnchor()
    loaded.load_state_dict(old)
    assert loaded.onsets.pre is None and loaded.onsets.onset is None
    with pytest.raises(TypeError, match="onset must be True or False"):
        om.StableAnchor(onset=1)  # type: ignore[arg-type]


def test_snapshots_keep_the_newest_copy_saved_before_every_open_run() -> None:
    s = OnsetSnapshots()
    p = torch.zeros(2)
    names = ["w"]
    s.track([None, None], 10, names, [p])  # idle: the parameters from sample 10 on
    p += 1
    s.track([12, None], 20, names, [p])  # a run opened at 12 >= 10: the copy of 10 is its snapshot
    assert s.onset_at == 10 and float(s.onset["w"][0]) == 0.0  # type: ignore[index]
    assert s.pre_at == 20 and float(s.pre["w"][0]) == 1.0  # type: ignore[index]
    assert s.before(15) is s.onset and s.before(25) is s.pre and s.before(5) is None
    p += 1
    s.track([12, 22], 30, names, [p])  # both open: nothing can open now, no copy
    assert s.pre_at == 20
    s.track([None, None], 40, names, [p])  # both closed: the run's snapshot is dropped
    assert s.onset is None and s.pre_at == 40
