"""No field without a reader: every config field is read somewhere in src/ outside config.py.

A switch nothing reads is worse than none: a user sets it and nothing happens. The check is a grep:
a field ``name`` of section ``sec`` counts as read where some module other than config.py has the
attribute access ``.name`` (not a method call ``.name(``) or names the dotted key ``"sec.name"``.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from vjepa_adapt.config import PipelineConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "vjepa_adapt"
# Every section has its readers now (Ch 11 included): nothing is exempt.
EXEMPT_SECTIONS: set[str] = set()


def _sections(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel]]]:
    """(dotted path, model) of ``model`` and of every section nested in it (lists and optionals too)."""
    out = [(prefix, model)]
    for name, info in model.model_fields.items():
        for arg in [info.annotation, *_type_args(info.annotation)]:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out += _sections(arg, f"{prefix}.{name}" if prefix else name)
    return out


def _type_args(tp: object) -> list[object]:
    args = list(typing.get_args(tp))
    return args + [a for arg in args for a in _type_args(arg)]


def unread_fields(sources: str) -> list[str]:
    """Dotted config fields that ``sources`` never reads (exempt sections left out)."""
    unread = []
    for path, model in _sections(PipelineConfig, ""):
        if not path or path.split(".")[0] in EXEMPT_SECTIONS:
            continue
        for name, info in model.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                continue  # a subsection: its own fields are checked
            attribute = re.search(rf"\.{name}\b(?!\s*\()", sources)
            dotted = f'"{path}.{name}"' in sources
            if not (attribute or dotted):
                unread.append(f"{path}.{name}")
    return unread


def test_every_config_field_has_a_reader_outside_config_py():
    sources = "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py") if p.name != "config.py")
    unread = unread_fields(sources)
    assert not unread, f"config fields no code reads (remove them or read them): {unread}"


def test_the_check_sees_nested_sections_and_method_calls():
    everything = unread_fields("")
    nested = {"run.seed", "train.lr", "train.stages.unfreeze_fraction", "masking.generators.num_blocks"}
    assert nested <= set(everything)
    assert {"segment.iou_threshold", "factors.splits"} <= set(everything)  # Ch 11 is checked too
    # a method of the same name is no reader; an attribute access or the dotted key is
    assert "model.compile" in unread_fields("layer.compile(dynamic=True)")
    assert "model.compile" not in unread_fields("switch = cfg.model.compile")
    assert "data.split_seed" not in unread_fields('reads=["data.split_seed"]')
