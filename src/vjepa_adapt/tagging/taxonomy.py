"""The tag taxonomy: which fields a clip gets, which values each may take, and their synonyms.

The taxonomy lives in a YAML file (packaged default: ``vjepa_adapt/configs/taxonomy.yaml``) so a
user can retarget tagging to another domain without touching code. The file is validated here,
field by field, so a typo fails at load with the field's name instead of silently producing
"unknown" for every clip.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from vjepa_adapt.errors import ConfigError

UNKNOWN = "unknown"
KINDS = ("single", "multi")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_TOP_KEYS = {"version", "default_confidence", "fields"}
_FIELD_KEYS = {"kind", "description", "values", "synonyms"}


def normalise_token(text: str) -> str:
    """Lower-case, trim, and turn runs of spaces/hyphens/slashes into ``_`` ("Night-time " → "night_time")."""
    text = text.strip().lower()
    text = re.sub(r"[\s\-/]+", "_", text)
    text = re.sub(r"[^a-z0-9_&]", "", text)  # drop stray punctuation: "day." / "'day'"
    return text.strip("_")


@dataclass(frozen=True)
class TagField:
    name: str
    kind: str  # "single" | "multi"
    values: tuple[str, ...]
    description: str = ""
    synonyms: dict[str, str] = field(default_factory=dict)  # normalised phrase → value

    @property
    def default(self) -> str | list[str]:
        """What a missing or unusable answer becomes."""
        return UNKNOWN if self.kind == "single" else [UNKNOWN]


@dataclass(frozen=True)
class Taxonomy:
    fields: tuple[TagField, ...]
    version: int = 1
    default_confidence: float = 0.5
    source: str = ""  # the file it came from, for messages and provenance

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> TagField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"taxonomy has no field {name!r}; fields: {', '.join(self.names)}")


def default_taxonomy_path() -> Path:
    return Path(str(resources.files("vjepa_adapt") / "configs" / "taxonomy.yaml"))


def load_taxonomy(path: str | os.PathLike | None = None) -> Taxonomy:
    """Read and validate a taxonomy YAML (``None`` → the packaged default)."""
    path = Path(path) if path is not None else default_taxonomy_path()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"taxonomy file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"taxonomy file {path} is not valid YAML: {err}") from None
    return build_taxonomy(raw, source=str(path))


def build_taxonomy(raw: object, source: str = "<dict>") -> Taxonomy:
    """Validate an already-parsed taxonomy mapping (the YAML's content)."""
    where = f"taxonomy {source}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with 'fields', got {type(raw).__name__}")
    extra = set(raw) - _TOP_KEYS
    if extra:
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(extra)}; allowed: {sorted(_TOP_KEYS)}")

    version = raw.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(f"{where}: 'version' must be an integer, got {version!r}")
    conf = raw.get("default_confidence", 0.5)
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not (0.0 <= conf <= 1.0) or math.isnan(conf):
        raise ConfigError(f"{where}: 'default_confidence' must be a number in [0, 1], got {conf!r}")

    fields_raw = raw.get("fields")
    if not isinstance(fields_raw, dict) or not fields_raw:
        raise ConfigError(f"{where}: 'fields' must be a non-empty mapping of field name → spec")
    fields = tuple(_build_field(name, spec, where) for name, spec in fields_raw.items())
    return Taxonomy(fields=fields, version=version, default_confidence=float(conf), source=source)


def _build_field(name: object, spec: object, where: str) -> TagField:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{where}: field name {name!r} must be snake_case (a-z, 0-9, _)")
    at = f"{where}: field '{name}'"
    if not isinstance(spec, dict):
        raise ConfigError(f"{at}: expected a mapping with kind/values, got {type(spec).__name__}")
    extra = set(spec) - _FIELD_KEYS
    if extra:
        raise ConfigError(f"{at}: unknown key(s) {sorted(extra)}; allowed: {sorted(_FIELD_KEYS)}")

    kind = spec.get("kind", "single")
    if kind not in KINDS:
        raise ConfigError(f"{at}: 'kind' must be one of {KINDS}, got {kind!r}")
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{at}: 'description' must be a string")

    values = spec.get("values")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{at}: 'values' must be a non-empty list")
    for v in values:
        if not isinstance(v, str) or not _NAME_RE.match(v):
            raise ConfigError(f"{at}: value {v!r} must be a snake_case string")
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ConfigError(f"{at}: duplicate value(s) {dupes}")
    if UNKNOWN not in values:
        raise ConfigError(f"{at}: 'values' must include {UNKNOWN!r} (what unusable answers become)")

    synonyms_raw = spec.get("synonyms") or {}
    if not isinstance(synonyms_raw, dict):
        raise ConfigError(f"{at}: 'synonyms' must be a mapping phrase → value")
    synonyms: dict[str, str] = {}
    for phrase, target in synonyms_raw.items():
        # YAML reads bare no/yes/on/off as booleans; name the culprit rather than mis-map it.
        if not isinstance(phrase, str):
            raise ConfigError(f"{at}: synonym key {phrase!r} must be a string (quote it in YAML)")
        if target not in values:
            raise ConfigError(f"{at}: synonym {phrase!r} maps to {target!r}, which is not one of its values")
        key = normalise_token(phrase)
        if key in values and key != target:
            raise ConfigError(f"{at}: synonym {phrase!r} shadows the value {key!r}")
        synonyms[key] = target
    return TagField(name=name, kind=kind, values=tuple(values), description=description, synonyms=synonyms)
