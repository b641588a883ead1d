"""Per-layer attention kinds (`model.attention_schedule`).

Empty: every layer uses model.attention. Otherwise a comma-separated list of kinds splits the
layers into that many consecutive, near-equal groups; "diag_attention,norm_attention" is the
TransNormer stack (block-local softmax in the first half of the layers, NormAttention in the
rest) and "transnormer" names it.
"""
from __future__ import annotations

from jaxlab.errors import ConfigError

NAMED_SCHEDULES = {"transnormer": "diag_attention,norm_attention"}


def attention_kind(cfg, layer_index: int) -> str:
    """The attention kind of layer `layer_index`: model.attention, or the entry of
    model.attention_schedule (a named schedule or comma-separated kinds) for that layer."""
    schedule = cfg.get("attention_schedule", "") or ""
    if not schedule:
        return cfg.attention
    kinds = [kind.strip() for kind in NAMED_SCHEDULES.get(schedule, schedule).split(",")]
    if not all(kinds):
        raise ConfigError(f"model.attention_schedule={schedule!r} has an empty entry; give "
                          f"comma-separated attention kinds or one of: {', '.join(NAMED_SCHEDULES)}")
    return kinds[layer_index * len(kinds) // cfg.depth]
