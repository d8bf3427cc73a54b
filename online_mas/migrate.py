"""Reading OnlineMAS state dicts of older versions (the layout of version 1, online-mas 0.1)."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["STATE_VERSION", "current_state", "state_from_v1"]

STATE_VERSION = 2


def current_state(state: object, *, anchor: str) -> Mapping[str, object]:
    """``state`` in the current layout (version 1 is migrated), checked to have been saved with an
    anchor policy of kind ``anchor``."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict from OnlineMAS.state_dict(), got {type(state)!r}")
    if state.get("version") == 1:
        state = state_from_v1(state)
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"OnlineMAS state version {state.get('version')!r} is not supported "
                         f"(this version reads 1 and {STATE_VERSION})")
    policy = state.get("anchor_policy")
    kind = policy.get("kind") if isinstance(policy, Mapping) else None
    if kind != anchor:
        raise ValueError(f"state was saved with a {kind!r} anchor, this OnlineMAS has a {anchor!r} one")
    return state


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
