"""The instruction sent to a vision-language model: every field, its allowed values, strict JSON."""

from __future__ import annotations

import json

from vjepa_adapt.tagging.taxonomy import UNKNOWN, Taxonomy


def build_prompt(taxonomy: Taxonomy) -> str:
    """A prompt that lists each field with its allowed values and asks for one JSON object."""
    lines = [
        "You are labelling a short street video clip; the images are frames from it in time order.",
        "Describe the clip with the fields below. Use ONLY the listed values, spelled exactly as"
        f' written. If you cannot tell, use "{UNKNOWN}".',
        "For each field give a confidence between 0 and 1.",
        "",
        "Fields:",
    ]
    for f in taxonomy.fields:
        choice = "one of" if f.kind == "single" else "a list of any of"
        about = f" — {f.description}" if f.description else ""
        lines.append(f"- {f.name} ({choice}: {', '.join(f.values)}){about}")
    # The shape uses placeholders, not real values: small models tend to copy an example verbatim,
    # and a copied placeholder is caught (defaulted and counted) where a copied value would not be.
    members = []
    for f in taxonomy.fields:
        value = '"<value>"' if f.kind == "single" else '["<value>", ...]'
        members.append(f'{json.dumps(f.name)}: {{"value": {value}, "confidence": <0 to 1>}}')
    lines += [
        "",
        "Reply with a single JSON object and nothing else (no prose, no code fences), shaped like:",
        "{" + ", ".join(members) + "}",
    ]
    return "\n".join(lines)
