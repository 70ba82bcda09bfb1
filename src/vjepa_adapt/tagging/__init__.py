"""The ``tag`` stage (m04): tag clips with a fixed taxonomy for the per-tag report breakdown.

taxonomy.py (the YAML schema) · prompt.py (VLM instruction) · parse.py (strict parsing + repair)
· frames.py (TagFailure, frame checks) · backends.py (interface, factory) · heuristic.py · hf_vlm.py
· openai_server.py · stage.py.
"""

from vjepa_adapt.tagging.backends import BACKENDS, TagBackend, build_backend
from vjepa_adapt.tagging.frames import TagFailure
from vjepa_adapt.tagging.parse import ParseResult, parse_tags
from vjepa_adapt.tagging.prompt import build_prompt
from vjepa_adapt.tagging.stage import TAGS_FILE, load_tags, tag_clips
from vjepa_adapt.tagging.taxonomy import UNKNOWN, TagField, Taxonomy, load_taxonomy

__all__ = [
    "BACKENDS",
    "ParseResult",
    "TAGS_FILE",
    "TagBackend",
    "TagFailure",
    "TagField",
    "Taxonomy",
    "UNKNOWN",
    "build_backend",
    "build_prompt",
    "load_tags",
    "load_taxonomy",
    "parse_tags",
    "tag_clips",
]
