"""Strict parsing of a tagger's reply against the taxonomy, with light, counted repair.

A VLM reply is free text. We pull out the JSON object (inside ```json fences or prose), repair
cheap syntax slips (trailing commas, single quotes, unquoted keys, Python literals, a reply cut
off by ``max_new_tokens``), then check every field against the taxonomy:

- a value is matched after case/space normalisation, then through the field's synonyms and a
  plural/underscore-insensitive match; anything else becomes "unknown" and the field is *defaulted*;
- a missing field is *defaulted* to "unknown";
- a multi-choice list keeps only known values (dropping the rest is a *repair*);
- a confidence is read from ``{"value": .., "confidence": ..}``, ``<field>_confidence`` or a
  top-level ``confidences`` mapping; strings, percentages and out-of-range numbers are repaired,
  a missing one becomes the taxonomy's ``default_confidence`` (a repair); a defaulted field gets 0.

Every repair and default is listed in the result so the stage can count them and fail a run that
defaulted too much, instead of reporting accuracy per "unknown".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vjepa_adapt.tagging.taxonomy import UNKNOWN, TagField, Taxonomy, normalise_token

# Verbal confidences some models write instead of numbers.
_WORD_CONFIDENCE = {
    "very_high": 0.95,
    "high": 0.85,
    "medium": 0.6,
    "moderate": 0.6,
    "low": 0.3,
    "very_low": 0.1,
}


@dataclass
class ParseResult:
    tags: dict[str, str | list[str]]
    confidences: dict[str, float]
    repaired: list[str] = field(default_factory=list)  # "field: what was repaired"
    defaulted: list[str] = field(default_factory=list)  # field names set to "unknown" for lack of a usable answer
    json_error: str | None = None  # why no JSON object could be read (then every field is defaulted)

    @property
    def is_repaired(self) -> bool:
        return bool(self.repaired)

    @property
    def is_defaulted(self) -> bool:
        return bool(self.defaulted)


# ----------------------------------------------------------------------------- JSON extraction


def extract_json_text(text: str) -> str | None:
    """The first ``{...}`` object in ``text`` (fences and prose stripped), or None.

    A reply cut off mid-object returns everything from the opening brace, for
    :func:`repair_json_text` to close.
    """
    fence = re.search(r"```[a-zA-Z]*\s*(.*?)(?:```|$)", text, flags=re.S)
    if fence and "{" in fence.group(1):
        text = fence.group(1)
    start = text.find("{")
    if start < 0:
        return None
    body = text[start:]
    depth = 0
    for i, (ch, quoted) in enumerate(zip(body, _string_spans(body)[0])):
        if quoted:
            continue
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return body[: i + 1]
    return body


def _string_spans(text: str) -> tuple[list[bool], bool]:
    """Which characters of ``text`` belong to a double-quoted JSON string (its quotes included), and
    whether ``text`` ends inside one. Brackets and commas count only outside strings."""
    inside, in_str, esc = [], False, False
    for ch in text:
        if in_str:
            inside.append(True)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        else:
            in_str = ch == '"'
            inside.append(in_str)
    return inside, in_str


def _outside_strings(s: str, pattern: str, repl: str) -> str:
    """``re.sub`` applied only to the parts of ``s`` outside double-quoted strings."""
    parts = re.split(r'("(?:[^"\\]|\\.)*")', s)
    return "".join(p if i % 2 else re.sub(pattern, repl, p) for i, p in enumerate(parts))


def _fix_smart_quotes(s: str) -> str:
    return s.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")


def _fix_trailing_commas(s: str) -> str:
    return _outside_strings(s, r",\s*([}\]])", r"\1")


def _fix_python_literals(s: str) -> str:
    s = _outside_strings(s, r"\bTrue\b", "true")
    s = _outside_strings(s, r"\bFalse\b", "false")
    return _outside_strings(s, r"\bNone\b", "null")


def _fix_single_quotes(s: str) -> str:
    # 'text' → "text" outside double-quoted strings; an apostrophe inside a "..." string is kept.
    def requote(m: re.Match) -> str:
        return json.dumps(m.group(1).replace("\\'", "'"))

    parts = re.split(r'("(?:[^"\\]|\\.)*")', s)
    return "".join(p if i % 2 else re.sub(r"'((?:[^'\\]|\\.)*)'", requote, p) for i, p in enumerate(parts))


def _fix_unquoted_keys(s: str) -> str:
    return _outside_strings(s, r"([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:", r'\1"\2":')


def _close_truncated(s: str) -> str:
    """Close an object cut off mid-way: end an open string, drop a dangling comma/key, add brackets."""

    def scan(t: str) -> tuple[bool, list[str], int]:
        inside, in_str = _string_spans(t)
        stack: list[str] = []
        last_comma = -1
        for i, (ch, quoted) in enumerate(zip(t, inside)):
            if quoted:
                continue
            if ch in "{[":
                stack.append("}" if ch == "{" else "]")
            elif ch in "}]" and stack:
                stack.pop()
            elif ch == ",":
                last_comma = i
        return in_str, stack, last_comma

    in_str, stack, last_comma = scan(s)
    if not stack and not in_str:
        return s
    t = s + ('"' if in_str else "")
    t = t.rstrip()
    if t.endswith(","):
        t = t[:-1]
    if t.endswith(":"):
        t += " null"
    closed = t + "".join(reversed(stack))
    try:
        json.loads(closed)
        return closed
    except json.JSONDecodeError:
        pass
    # Cut back to the last complete member (a key without its value, a half word) and close again.
    if last_comma > 0:
        t = s[:last_comma]
        in_str, stack, _ = scan(t)
        if not in_str:
            return t + "".join(reversed(stack))
    return closed


_REPAIRS = (
    ("smart quotes", _fix_smart_quotes),
    ("python literals", _fix_python_literals),
    ("single quotes", _fix_single_quotes),
    ("unquoted keys", _fix_unquoted_keys),
    ("trailing commas", _fix_trailing_commas),
    ("truncated reply closed", _close_truncated),
)


def repair_json_text(s: str) -> tuple[Any, list[str]]:
    """``json.loads`` after the fewest cheap repairs; returns (object, repairs applied).

    Raises ``ValueError`` when no repair gives valid JSON.
    """
    try:
        return json.loads(s), []
    except json.JSONDecodeError:
        pass
    applied: list[str] = []
    for name, fix in _REPAIRS:
        fixed = fix(s)
        if fixed == s:
            continue
        s = fixed
        applied.append(name)
        try:
            return json.loads(s), applied
        except json.JSONDecodeError:
            continue
    raise ValueError("reply contains no valid JSON object" + (f" (tried: {', '.join(applied)})" if applied else ""))


# ----------------------------------------------------------------------------- field checks


def resolve_value(tag_field: TagField, raw: str) -> tuple[str | None, bool]:
    """Map a raw answer to one of the field's values: (value or None, whether it took a synonym-level repair)."""
    token = normalise_token(raw)
    if token in tag_field.values:
        return token, False  # case/space differences are not worth a repair note
    if token in tag_field.synonyms:
        return tag_field.synonyms[token], True
    candidates = []
    if token.endswith("es"):
        candidates.append(token[:-2])
    if token.endswith("s"):
        candidates.append(token[:-1])
    for cand in candidates:
        if cand in tag_field.values:
            return cand, True
        if cand in tag_field.synonyms:
            return tag_field.synonyms[cand], True
    squashed = token.replace("_", "")
    for v in tag_field.values:
        if v.replace("_", "") == squashed:
            return v, True
    return None, False


def coerce_confidence(raw: Any) -> tuple[float | None, str | None]:
    """A confidence in [0, 1] from a number/string/word: (value or None if unusable, repair note)."""
    note = None
    if raw is None:
        return None, None
    if isinstance(raw, bool):
        return None, "not a number"
    if isinstance(raw, str):
        word = normalise_token(raw)
        if word in _WORD_CONFIDENCE:
            return _WORD_CONFIDENCE[word], f"word {raw!r}"
        text = raw.strip()
        percent = text.endswith("%")
        try:
            x = float(text.rstrip("%").strip())
        except ValueError:
            return None, f"unreadable {raw!r}"
        if percent:
            x /= 100.0
        note = f"string {raw!r}"
    elif isinstance(raw, (int, float)):
        x = float(raw)
    else:
        return None, f"not a number ({type(raw).__name__})"
    if math.isnan(x) or math.isinf(x):
        return None, f"not finite ({raw!r})"
    if 2.0 <= x <= 100.0:
        return x / 100.0, f"percent {raw!r}"  # "85" almost always means 85%; 1.2 is just over
    if x < 0.0 or x > 1.0:
        return min(max(x, 0.0), 1.0), f"clipped {raw!r}"
    return x, note


def _unpack_entry(entry: Any) -> tuple[Any, Any]:
    """(value, confidence) from ``"x"`` or ``{"value": "x", "confidence": 0.8}`` style entries."""
    if isinstance(entry, dict):
        value = next((entry[k] for k in ("value", "values", "label", "answer") if k in entry), None)
        conf = next((entry[k] for k in ("confidence", "conf", "score", "probability") if k in entry), None)
        return value, conf
    return entry, None


def _parse_single(f: TagField, value: Any, repaired: list[str]) -> str | None:
    if isinstance(value, list):
        items = [v for v in value if isinstance(v, str)]
        if not items:
            return None
        if len(value) > 1:
            repaired.append(f"{f.name}: several values for a single-choice field, kept the first usable")
        for item in items:
            got, syn = resolve_value(f, item)
            if got is not None:
                if syn:
                    repaired.append(f"{f.name}: {item!r} → {got!r}")
                return got
        return None
    if not isinstance(value, str):
        return None
    got, syn = resolve_value(f, value)
    if got is not None and syn:
        repaired.append(f"{f.name}: {value!r} → {got!r}")
    return got


def _parse_multi(f: TagField, value: Any, repaired: list[str]) -> list[str] | None:
    if isinstance(value, str):
        value = [p for p in re.split(r"[,;|]", value) if p.strip()]
        repaired.append(f"{f.name}: string split into a list")
    if not isinstance(value, list):
        return None
    kept: list[str] = []
    dropped: list[str] = []
    for item in value:
        got, syn = resolve_value(f, item) if isinstance(item, str) else (None, False)
        if got is None:
            dropped.append(repr(item))
            continue
        if syn:
            repaired.append(f"{f.name}: {item!r} → {got!r}")
        if got not in kept:
            kept.append(got)
    if dropped:
        repaired.append(f"{f.name}: dropped unknown value(s) {', '.join(dropped)}")
    if len(kept) > 1 and UNKNOWN in kept:
        kept.remove(UNKNOWN)  # "unknown" next to real answers carries nothing
    if value and not kept:
        return None  # every item was unusable: that is a default, not an empty answer
    return kept


def _find_key(tags: dict, name: str, repaired: list[str]) -> str | None:
    if name in tags:
        return name
    for key in tags:
        if isinstance(key, str) and normalise_token(key) == name:
            repaired.append(f"{name}: key {key!r} normalised")
            return key
    return None


def parse_tags(
    raw: str | dict,
    taxonomy: Taxonomy,
    expected_fields: Iterable[str] | None = None,
) -> ParseResult:
    """Check a tagger reply (text or an already-decoded dict) against ``taxonomy``.

    ``expected_fields``: the fields this backend answers (None = all). Other fields are set to
    "unknown" with confidence 0 without counting as defaulted — the heuristic backend measures only
    a few fields and must not be failed for the rest.
    """
    expected = set(taxonomy.names if expected_fields is None else expected_fields)
    unknown_fields = expected - set(taxonomy.names)
    if unknown_fields:
        raise ValueError(f"expected_fields not in the taxonomy: {sorted(unknown_fields)}")

    repaired: list[str] = []
    json_error = None
    obj: Any = raw
    if isinstance(raw, str):
        text = extract_json_text(raw)
        if text is None:
            obj, json_error = None, "reply contains no JSON object"
        else:
            try:
                obj, fixes = repair_json_text(text)
                repaired.extend(f"json: {fx}" for fx in fixes)
            except ValueError as err:
                obj, json_error = None, str(err)
    if isinstance(obj, list) and len(obj) == 1 and isinstance(obj[0], dict):
        obj = obj[0]
        repaired.append("json: object unwrapped from a list")
    if obj is not None and not isinstance(obj, dict):
        obj, json_error = None, f"reply JSON is a {type(obj).__name__}, not an object"
    obj = obj or {}

    # Accept {"tags": {...}, "confidences": {...}} as well as a flat object.
    tags_in = obj.get("tags") if isinstance(obj.get("tags"), dict) else obj
    top_conf = next((obj[k] for k in ("confidences", "confidence") if isinstance(obj.get(k), dict)), {})

    tags: dict[str, str | list[str]] = {}
    confidences: dict[str, float] = {}
    defaulted: list[str] = []
    for f in taxonomy.fields:
        if f.name not in expected:
            tags[f.name], confidences[f.name] = f.default, 0.0
            continue
        key = _find_key(tags_in, f.name, repaired)
        value, conf_raw = _unpack_entry(tags_in[key]) if key is not None else (None, None)
        if conf_raw is None:
            conf_raw = tags_in.get(f"{f.name}_confidence", top_conf.get(f.name))

        got = None
        if value is not None:
            got = _parse_single(f, value, repaired) if f.kind == "single" else _parse_multi(f, value, repaired)
        if got is None:
            tags[f.name], confidences[f.name] = f.default, 0.0
            defaulted.append(f.name)
            continue
        tags[f.name] = got
        conf, note = coerce_confidence(conf_raw)
        if conf is None:
            conf = taxonomy.default_confidence
            note = f"confidence {'missing' if note is None else note} → {conf}"
        elif note is not None:
            note = f"confidence {note} → {conf:g}"
        if note is not None:
            repaired.append(f"{f.name}: {note}")
        confidences[f.name] = float(conf)
    return ParseResult(tags, confidences, repaired, defaulted, json_error)
