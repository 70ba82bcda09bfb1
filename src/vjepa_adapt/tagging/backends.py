"""One interface for every tagger, and the factory that builds one by name.

A backend turns one clip's frames into a reply: raw text (VLMs, servers) or an already-structured
dict (the heuristic). Replies are always checked by :func:`vjepa_adapt.tagging.parse.parse_tags`,
so a backend never has to be trusted to follow the taxonomy.

A backend that cannot tag one clip (server timeout, HTTP error, unusable frames) raises
``tagging.frames.TagFailure``; the stage records the clip as skipped with that reason and carries on.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vjepa_adapt.errors import ConfigError

BACKENDS = ("heuristic", "hf", "openai")


@runtime_checkable
class TagBackend(Protocol):
    name: str
    # Fields the backend answers; None = every taxonomy field. Defaults are counted only over these.
    measured_fields: tuple[str, ...] | None

    def tag(self, clip_id: str, frames: np.ndarray) -> str | dict:
        """Tag one clip from its frames ``(T, H, W, 3)`` uint8 RGB; raise TagFailure to skip it."""
        ...


def build_backend(name: str, taxonomy: Any = None, **kwargs: Any) -> TagBackend:
    """Build a backend by name: 'heuristic', 'hf' (transformers VLM) or 'openai' (compatible server).

    ``taxonomy`` (a Taxonomy) supplies the VLM prompt when ``prompt`` is not given; the keyword
    arguments go to the backend's constructor unchanged.
    """
    if name == "heuristic":
        from vjepa_adapt.tagging.heuristic import HeuristicBackend as cls
    elif name == "hf":
        from vjepa_adapt.tagging.hf_vlm import HFVLMBackend as cls
    elif name == "openai":
        from vjepa_adapt.tagging.openai_server import OpenAIServerBackend as cls
    else:
        raise ConfigError(f"tag.backend must be one of {BACKENDS}, got {name!r}")
    if name != "heuristic" and kwargs.get("prompt") is None and taxonomy is not None:
        from vjepa_adapt.tagging.prompt import build_prompt

        kwargs["prompt"] = build_prompt(taxonomy)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise ConfigError(f"tag backend {name!r}: {err}") from None
    return cls(**kwargs)
