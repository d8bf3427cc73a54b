"""online_mas.river.Classifier: river's estimator protocol and checks, growth, a custom module."""

from __future__ import annotations

import pickle

import pytest
import torch
from river import checks, datasets, evaluate, metrics, preprocessing
from torch import nn

from online_mas.river import Classifier


def _checks() -> list[tuple[str, dict[str, object]]]:
    cases = []
    for params in Classifier._unit_test_params():
        model = Classifier(**params)
        cases += [(check.__name__, params) for check in checks.yield_checks(model)
                  if check.__name__ not in model._unit_test_skips()]
    return cases


@pytest.mark.parametrize(("name", "params"), _checks(), ids=lambda v: v if isinstance(v, str) else "")
def test_river_estimator_checks(name: str, params: dict[str, object]) -> None:
    model = Classifier(**params)
    check = next(c for c in checks.yield_checks(model) if c.__name__ == name)
    check(model.clone())


def test_progressive_validation_equals_a_hand_written_test_then_train_loop() -> None:
    stream = list(datasets.Phishing())[:400]
    auto = preprocessing.StandardScaler() | Classifier(seed=0)
    score = evaluate.progressive_val_score(stream, auto, metrics.Accuracy())
    hand, hits, scored = preprocessing.StandardScaler() | Classifier(seed=0), 0, 0
    for x, y in stream:
        guess = hand.predict_one(x)  # predict first, then learn; river skips "no prediction yet"
        if guess is not None:
            hits, scored = hits + (guess == y), scored + 1
        hand.learn_one(x, y)
    assert scored == len(stream) - 1 and score.get() == pytest.approx(hits / scored)
    assert score.get() > 0.7


def test_the_mlp_grows_with_new_classes_and_features_and_keeps_what_it_learned() -> None:
    model = Classifier(seed=0, window=4)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        a = float(torch.randn((), generator=g))
        model.learn_one({"a": a}, "pos" if a > 0 else "neg")
    assert model.predict_one({"a": 2.0}) == "pos" and model.predict_one({"a": -2.0}) == "neg"
    for i in range(40):  # a third class and a second feature arrive
        model.learn_one({"a": 0.0, "b": float(i % 2)}, "mid")
    net = model._net
    assert isinstance(net, nn.Sequential) and net[0].in_features == 2 and net[-1].out_features == 4
    assert set(model.predict_proba_one({"a": 0.0, "b": 1.0})) == {"pos", "neg", "mid"}
    assert model.mas is not None and set(model.mas.omega) == {n for n, _ in net.named_parameters()}


def test_a_module_factory_and_its_number_of_classes() -> None:
    built: list[tuple[int, int]] = []

    def factory(n_features: int, n_classes: int) -> nn.Module:
        built.append((n_features, n_classes))
        return nn.Sequential(nn.Linear(n_features, 16), nn.Tanh(), nn.Linear(16, n_classes))

    model = Classifier(module=factory, n_classes=3, seed=0)
    for i in range(30):
        model.learn_one({"x": float(i % 3), "y": 1.0}, i % 3)
    assert built == [(2, 3)] and set(model.predict_proba_one({"x": 1.0, "y": 1.0})) == {0, 1, 2}
    with pytest.raises(ValueError, match="class 3 is class number 4, but the module has n_classes=3"):
        model.learn_one({"x": 0.0, "y": 0.0}, 3)
    with pytest.raises(ValueError, match="a module needs n_classes, an int >= 2, got None"):
        Classifier(module=factory)


def test_a_pickled_classifier_predicts_and_learns_like_the_original() -> None:
    model = Classifier(seed=0, window=4)
    stream = list(datasets.Phishing())[:100]
    for x, y in stream[:60]:
        model.learn_one(x, y)
    twin = pickle.loads(pickle.dumps(model))
    for x, y in stream[60:]:
        assert model.predict_proba_one(x) == twin.predict_proba_one(x)
        model.learn_one(x, y)
        twin.learn_one(x, y)
    assert model.mas.step == twin.mas.step == 25  # type: ignore[union-attr]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
    ({"lam": -1.0}, "lam must be a finite number >= 0, got -1.0"),
    ({"window": 0}, "window must be an int >= 1, got 0"),
    ({"hidden": [8]}, r"hidden must be a tuple of ints >= 1, got \[8\]"),
    ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\), got 1.0"),
])
def test_bad_arguments_name_the_value(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Classifier(**kwargs)  # type: ignore[arg-type]


def test_learn_many_and_predict_proba_many_on_pandas_frames_match_the_one_sample_calls() -> None:
    import pandas as pd  # in the test extra
    rows = list(datasets.Phishing())[:80]
    X = pd.DataFrame([x for x, _ in rows])
    y = pd.Series([t for _, t in rows])
    one, many = Classifier(seed=0, window=8), Classifier(seed=0, window=8)
    for x, t in rows[:40]:
        one.learn_one(x, t)
    many.learn_many(X.iloc[:40], y.iloc[:40])
    probs = many.predict_proba_many(X.iloc[40:])
    assert list(probs.index) == list(range(40, 80))
    for i, (x, _) in enumerate(rows[40:]):
        assert dict(probs.iloc[i]) == pytest.approx(one.predict_proba_one(x))


def test_the_old_every_keyword_fails_naming_share() -> None:
    with pytest.raises(ValueError, match=r"Classifier\(every=4\) counted windows.*share=1/every"):
        Classifier(every=4)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['evry'\]"):
        Classifier(evry=4)
    with pytest.raises(ValueError, match=r"share must be a number in \(0, 1\], got 4"):
        Classifier(share=4)
