"""Reading OnlineMAS state dicts of older versions: the layout of version 1 (online-mas 0.1), and
version 2, whose importance interval counted observe() calls."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["STATE_VERSION", "current_state", "stable_anchor_from_v1", "state_from_v1", "state_from_v2"]

STATE_VERSION = 3


def current_state(state: object, *, anchor: str) -> Mapping[str, object]:
    """``state`` in the current layout (versions 1 and 2 are migrated), checked to have been saved
    with an anchor policy of kind ``anchor``."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict from OnlineMAS.state_dict(), got {type(state)!r}")
    if state.get("version") == 1:
        state = state_from_v1(state)
    if state.get("version") == 2:
        state = state_from_v2(state)
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"OnlineMAS state version {state.get('version')!r} is not supported "
                         f"(this version reads 1 to {STATE_VERSION})")
    policy = state.get("anchor_policy")
    kind = policy.get("kind") if isinstance(policy, Mapping) else None
    if kind != anchor:
        raise ValueError(f"state was saved with a {kind!r} anchor, this OnlineMAS has a {anchor!r} one")
    if kind == "stable" and isinstance(policy, Mapping) and policy.get("version") == 1:
        state = {**state, "anchor_policy": stable_anchor_from_v1(policy, state.get("step"))}
    return state


def stable_anchor_from_v1(policy: Mapping[str, object], step: object) -> dict[str, object]:
    """A version-2 StableAnchor state (interval in samples) from a version-1 one (interval of
    ``every`` observe() calls), saved at OnlineMAS step ``step``.

    Exact only where the copy had just moved (``step % every == 0``): then no samples are pending.
    Otherwise the samples since its last move are unknown (version 1 did not record the batch
    size) and this raises ValueError."""
    every = policy.get("every", 10)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1 \
            or isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"version-1 StableAnchor state with every={every!r} at step {step!r} cannot "
                         "be read (every must be an int >= 1, step an int >= 0)")
    if step % every:
        raise ValueError(
            f"this state's StableAnchor counted its interval in observe() calls (every={every}) and "
            f"was saved {step % every} call(s) after its slow copy last moved (step {step}); the "
            "interval is now in samples (StableAnchor(samples=every*batch)) and the samples since "
            "that move were not recorded, so it cannot migrate exactly: with the release that wrote "
            f"it, continue to a step that is a multiple of {every} and save again")
    return {"version": 2, "kind": "stable", "weight": policy.get("weight", 0.5), "pending": 0,
            "slow": policy.get("slow", {})}


def state_from_v1(state: Mapping[str, object]) -> dict[str, object]:
    """The version-2 layout of a version-1 state dict: one flat dict whose policies were config
    fields (``config.anchor``, ``stable_*``, ``rule``, ``alpha``, ``signal``) becomes one entry per
    part. A list of two stable snapshots (0.1's first format) keeps the older one."""
    config = state.get("config")
    cfg: Mapping[str, object] = config if isinstance(config, Mapping) else {}
    stable = state.get("stable", {})
    if isinstance(stable, list):  # [older, newer] snapshots: keep the older
        stable = stable[0] if stable else {}
    if cfg.get("anchor", "stable") == "stable":
        anchor: dict[str, object] = {"version": 1, "kind": "stable", "every": cfg.get("stable_every", 10),
                                     "weight": cfg.get("stable_weight", 0.5),
                                     "slow": stable if isinstance(stable, dict) else {}}
    else:
        anchor = {"version": 1, "kind": "current"}
    config_v2 = {k: cfg[k] for k in ("method", "every", "subsample", "chunk_size", "seed", "normalize",
                                     "shared_forward") if k in cfg}
    return {
        "version": 2,
        "lam": state["lam"],
        "config": config_v2,
        "step": state["step"],
        "n_skipped": state.get("n_skipped", 0),
        "events": state.get("events", []),
        "generator": state.get("generator"),
        "running": state["running"],
        "consolidator": {"version": 1, "rule": cfg.get("rule", "sum"), "alpha": cfg.get("alpha"),
                         "normalize": cfg.get("normalize"), "segments": state["segments"],
                         "omega": state["omega"], "anchor": state["anchor"]},
        "anchor_policy": anchor,
        "trigger": {"version": 1, "detector": state.get("detector"),
                    "last_signal": state.get("last_signal"), "signal": state.get("feature_shift")},
        "buffer": state.get("buffer"),
    }


def state_from_v2(state: Mapping[str, object]) -> dict[str, object]:
    """The version-3 layout of a version-2 state: its importance interval counted observe() calls
    (``config.every``, estimates at the steps divisible by it), version 3 counts samples
    (``MASConfig.share``; what is owed is the ``"schedule"`` entry).

    The batch size was not recorded, so what is owed is kept as a fraction of the next batch:
    ``(step % every) / every`` of its samples, what the calls since the last estimate owe at
    ``share = 1/every``. Exact (the next estimates at the steps the old schedule had) when the
    loading OnlineMAS has ``share = 1/every`` and the batches keep one size of at most
    ``min_estimate``; otherwise the schedule is exact from the next estimate on. ``config`` is kept
    without ``every`` (``load_state_dict`` reads no config: the loading OnlineMAS's applies)."""
    config = state.get("config")
    cfg: dict[str, object] = dict(config) if isinstance(config, Mapping) else {}
    every, step = cfg.pop("every", 64), state.get("step", 0)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1 \
            or isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"version-2 OnlineMAS state with config.every={every!r} at step {step!r} cannot be "
                         "read (every must be an int >= 1, step an int >= 0)")
    schedule = {"version": 1, "owed": 0, "denominator": 1, "next_batch": [step % every, every]}
    return {**state, "version": 3, "config": cfg, "schedule": schedule}
