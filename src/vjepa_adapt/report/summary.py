"""The comparison table: every arm's probe result, paired Δ vs the reference arm, per class, per tag.

Reads only files the stages wrote (``RUN/probe/<arm>/{metrics.json,predictions.csv,history.json}``,
``head_eval.json`` of head-only arms, ``RUN/tag/tags.jsonl``) and never trains anything. An *arm* is
any probe folder the run has: the stage graph passes its ``probe/<arm>`` folders in graph order; a
run folder alone is read by :func:`discover_arms`. Arms that were not run are simply absent.

``summary.json`` (all accuracies and deltas are fractions; Δ is ``arm − reference`` on the test
clips both scored; ``discordant`` = [b, c] with b = clips only the reference got right and c =
clips only the arm got right — the exact p-value is the two-sided McNemar test on b and c):

```
{"reference": "frozen", "class_names": [...], "num_classes": K, "chance": 1/K, "n_test": n,
 "min_tag_count": N, "n_resamples": R, "seed": s, "tags": {field: {value: n_test_clips}},
 "arms": {arm: {"top1", "ci_low", "ci_high", "delta_vs_frozen", "delta_ci_low", "delta_ci_high",
                "p_value", "discordant": [b, c], "n_paired", "n_test", "num_classes", "macro_f1",
                "per_class": {class: {"accuracy", "support"}}, "per_tag": {field: {value: {"top1", "n"}}},
                "probe": {...chosen probe settings...}, "flags": [...],
                "head": {"top1", "ci_low", "ci_high", "n_test", "macro_f1"}   # head-only arms only
               }}}
```
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vjepa_adapt import storage
from vjepa_adapt.errors import BadInputError

LINEAR_DIR = "linear"  # probe/<arm>/linear (stages/evaluate.py)
FLOW_CEILING = "flow_ceiling"
HEAD_EVAL_FILE = "head_eval.json"  # written next to the probe outputs of a head-only arm
UNKNOWN_TAG = "unknown"


def discover_arms(run_dir: str | os.PathLike, reference: str | None = None) -> dict[str, Path]:
    """Probe folders of a run folder with a finished probe (``metrics.json``), reference first."""
    root = Path(run_dir) / "probe"
    found = sorted(p.parent.name for p in root.glob("*/metrics.json")) if root.is_dir() else []
    if reference in found:
        found.remove(reference)
        found.insert(0, reference)
    return {a: root / a for a in found}


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def load_test_tags(tags_file: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    """clip_id -> its tags (``{field: value or [values]}``); empty when the run has no tags."""
    if tags_file is None or not Path(tags_file).is_file():
        return {}
    from vjepa_adapt.tagging.stage import load_tags

    return {cid: row["tags"] for cid, row in load_tags(tags_file).items()}


def _tag_values(value: Any) -> list[str]:
    vals = value if isinstance(value, list) else [value]
    return sorted({str(v) for v in vals if v is not None and str(v) != UNKNOWN_TAG})


def tag_groups(clip_ids: Sequence[str], tags: Mapping[str, Mapping[str, Any]],
               min_count: int) -> dict[str, dict[str, list[str]]]:
    """field -> value -> the clips of ``clip_ids`` with that value, for values with >= ``min_count``
    clips. 'unknown' is left out; a multi-choice field puts a clip under each of its values."""
    groups: dict[str, dict[str, list[str]]] = {}
    for cid in clip_ids:
        for field, value in (tags.get(cid) or {}).items():
            for v in _tag_values(value):
                groups.setdefault(field, {}).setdefault(v, []).append(cid)
    out: dict[str, dict[str, list[str]]] = {}
    for field in groups:
        kept = {v: ids for v, ids in sorted(groups[field].items(), key=lambda kv: (-len(kv[1]), kv[0]))
                if len(ids) >= min_count}
        if kept:
            out[field] = kept
    return out


def _head_row(pdir: Path) -> dict[str, Any] | None:
    path = pdir / HEAD_EVAL_FILE
    if not path.is_file():
        return None
    h = storage.read_json(path)
    return {k: h[k] for k in ("top1", "ci_low", "ci_high", "n_test", "macro_f1") if k in h}


def build_summary(
    probe_dirs: Mapping[str, str | os.PathLike],
    reference: str = "frozen",
    *,
    tags_file: str | os.PathLike | None = None,
    min_tag_count: int = 10,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The comparison of every arm in ``probe_dirs`` (arm -> its probe folder, in table order)."""
    from vjepa_adapt.evaluate.probe import compare_arms, load_probe_results

    if not probe_dirs:
        raise BadInputError("no probe results to compare (no arm was probed)")
    if reference not in probe_dirs:
        raise BadInputError(f"report.reference_arm: {reference!r} has no probe result in this run "
                            f"(arms: {', '.join(probe_dirs)})")
    results = {a: load_probe_results(p) for a, p in probe_dirs.items()}
    ref = results[reference]
    names = ref.metrics["class_names"]
    tags = load_test_tags(tags_file)
    groups = tag_groups(ref.clip_ids, tags, min_tag_count)
    out: dict[str, Any] = {
        "reference": reference,
        "class_names": names,
        "num_classes": len(names),
        "chance": 1.0 / len(names),
        "n_test": ref.metrics["n_test"],
        "min_tag_count": min_tag_count,
        "n_resamples": n_resamples,
        "seed": seed,
        "tags": {f: {v: len(ids) for v, ids in vals.items()} for f, vals in groups.items()},
        "arms": {},
    }
    for arm, res in results.items():
        m = res.metrics
        row: dict[str, Any] = {k: m[k] for k in ("top1", "ci_low", "ci_high", "n_test", "num_classes")}
        row["macro_f1"] = m["macro_f1"]
        if arm == reference:
            row.update(delta_vs_frozen=0.0, delta_ci_low=0.0, delta_ci_high=0.0, p_value=1.0,
                       discordant=[0, 0], n_paired=m["n_test"])
        else:
            pr = compare_arms(probe_dirs[reference], probe_dirs[arm], n_resamples=n_resamples, seed=seed)
            row.update(delta_vs_frozen=pr.delta, delta_ci_low=pr.ci_low, delta_ci_high=pr.ci_high,
                       p_value=pr.p_value, discordant=[pr.n_ref_only, pr.n_arm_only], n_paired=pr.n)
        support = m.get("per_class_support", {})
        row["per_class"] = {c: {"accuracy": _finite(m["per_class_accuracy"].get(c)), "support": support.get(c)}
                            for c in names}
        correct = dict(zip(res.clip_ids, res.correct.tolist()))
        row["per_tag"] = {}
        for field, vals in groups.items():
            cells = {}
            for v, ids in vals.items():
                hits = [correct[c] for c in ids if c in correct]
                if hits:
                    cells[v] = {"top1": float(np.mean(hits)), "n": len(hits)}
            row["per_tag"][field] = cells
        row["probe"] = {k: m.get(k) for k in ("kind", "lr", "weight_decay", "best_epoch", "val_top1", "epochs",
                                              "n_train", "n_val")}
        row["flags"] = list(m.get("flags", []))  # the probe's own health flags (evaluate/probe.py probe_flags)
        lin = Path(probe_dirs[arm]) / LINEAR_DIR / "metrics.json"
        if lin.is_file():  # the linear probe on the same arm's mean vectors (probe.also_linear)
            lm = storage.read_json(lin)
            row["linear"] = {k: lm[k] for k in ("top1", "ci_low", "ci_high", "macro_f1")}
            row["linear"]["flags"] = list(lm.get("flags", []))
        head = _head_row(Path(probe_dirs[arm]))
        if head is not None:
            row["head"] = head
        out["arms"][arm] = row
    return out


# ---------------------------------------------------------------------------------------------
# Text renderings: the printed table and summary.md


def _pp(x: float) -> str:
    return f"{x * 100:+.1f}"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def table_cells(summary: Mapping[str, Any], arm: str) -> dict[str, str]:
    """One arm's row as display strings (shared by the printed table, Markdown and HTML)."""
    r = summary["arms"][arm]
    ref = arm == summary["reference"]
    head = r.get("head")
    return {
        "arm": arm,
        "top1": f"{r['top1']:.1%}",
        "ci": f"[{r['ci_low']:.1%}, {r['ci_high']:.1%}]",
        "delta": "—" if ref else f"{_pp(r['delta_vs_frozen'])} pp",
        "delta_ci": "" if ref else f"[{_pp(r['delta_ci_low'])}, {_pp(r['delta_ci_high'])}]",
        "p": "" if ref else _p(r["p_value"]),
        "bc": "" if ref else f"{r['discordant'][0]}/{r['discordant'][1]}",
        "macro_f1": f"{r['macro_f1']:.3f}",
        "head": f"{head['top1']:.1%}" if head else "",
        "linear": f"{r['linear']['top1']:.1%}" if "linear" in r else "",
        "n_test": str(r["n_test"]),
    }


def explanations(summary: Mapping[str, Any]) -> list[str]:
    """The lines that explain the optional columns and rows (shared by the text table and the HTML)."""
    lines = []
    if any("linear" in r for r in summary["arms"].values()):
        lines.append("linear = a linear probe on the same arm's mean-pooled features (same splits, same clips).")
    if FLOW_CEILING in summary["arms"]:
        lines.append(f"{FLOW_CEILING} = a linear probe on the 23-D flow features the labels are cut from: not an "
                     "encoder, what the labels allow.")
    src = summary.get("source_style")
    if src:
        lines.append(f"frozen on the source style (the style the base was trained on, {src['where']}): "
                     f"{src['top1']:.1%} [{src['ci_low']:.1%}, {src['ci_high']:.1%}] on {src['n_test']} source test "
                     f"clips; on this run's clips: {summary['arms'][summary['reference']]['top1']:.1%}.")
    return lines


def _footer(summary: Mapping[str, Any]) -> list[str]:
    k = summary["num_classes"]
    lines = [f"chance = 1/{k} = {1 / k:.1%}. Δ = arm − {summary['reference']} on the same test clips; "
             f"b/c = clips only {summary['reference']} / only the arm got right (exact McNemar p)."]
    if any("head" in r for r in summary["arms"].values()):
        lines.append("head = the head-only arm's motion_aux head scored on the test clips by itself.")
    lines += explanations(summary)
    for arm, r in summary["arms"].items():
        for f in r.get("flags", []):
            lines.append(f"note: {arm}: {f}")
    return lines


def format_table(summary: Mapping[str, Any]) -> str:
    """The comparison as a fixed-width text table (printed by ``compare``)."""
    ref = summary["reference"]
    arms = list(summary["arms"])
    width = max(18, *(len(a) + 1 for a in arms))
    header = (f"{'arm':<{width}} {'top-1':>7}  {'95% CI':<16} {'Δ vs ' + ref:>12}  {'Δ 95% CI':<16} {'p':>7} "
              f"{'b/c':>7} {'macro-F1':>8} {'linear':>7} {'head':>6}  n_test")
    lines = [header, "-" * len(header)]
    for arm in arms:
        c = table_cells(summary, arm)
        lines.append(f"{arm:<{width}} {c['top1']:>7}  {c['ci']:<16} {c['delta']:>12}  {c['delta_ci']:<16} {c['p']:>7} "
                     f"{c['bc']:>7} {c['macro_f1']:>8} {c['linear']:>7} {c['head']:>6}  {c['n_test']}")
    return "\n".join(lines + _footer(summary))


def format_markdown(summary: Mapping[str, Any]) -> str:
    """``summary.md``: the table, per-class accuracy and the per-tag breakdown."""
    ref = summary["reference"]
    arms = list(summary["arms"])
    out = ["# Comparison", "",
           f"Every arm through the same probe on the same {summary['n_test']} test clips "
           f"({summary['num_classes']} classes). Reference arm: **{ref}**.", "",
           f"| arm | top-1 | 95% CI | Δ vs {ref} | Δ 95% CI | p | b/c | macro-F1 | linear top-1 | head top-1 | n_test |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        c = table_cells(summary, arm)
        out.append(f"| {arm} | {c['top1']} | {c['ci']} | {c['delta']} | {c['delta_ci']} | {c['p']} | {c['bc']} | "
                   f"{c['macro_f1']} | {c['linear']} | {c['head']} | {c['n_test']} |")
    out += [""] + _footer(summary)
    names = summary["class_names"]
    support = summary["arms"][ref]["per_class"]
    out += ["", "## Per-class accuracy", "",
            "| arm | " + " | ".join(f"{n} (n={support[n]['support']})" for n in names) + " |",
            "|---|" + "---|" * len(names)]
    for arm in arms:
        pc = summary["arms"][arm]["per_class"]
        out.append(f"| {arm} | " + " | ".join("—" if pc[n]["accuracy"] is None else f"{pc[n]['accuracy']:.0%}"
                                             for n in names) + " |")
    out += ["", f"## Per-tag top-1 (tag values with at least {summary['min_tag_count']} test clips)", ""]
    if not summary["tags"]:
        out.append("No tag value has enough test clips (or the run has no tags).")
    else:
        out += ["| tag | value | n test | " + " | ".join(arms) + " |", "|---|---|---|" + "---|" * len(arms)]
        for field, vals in summary["tags"].items():
            for v, n in vals.items():
                cells = [summary["arms"][a]["per_tag"].get(field, {}).get(v) for a in arms]
                out.append(f"| {field} | {v} | {n} | " + " | ".join("—" if c is None else f"{c['top1']:.0%}"
                                                                   for c in cells) + " |")
    return "\n".join(out).rstrip() + "\n"


def write_summary(summary: Mapping[str, Any], out_dir: str | os.PathLike) -> None:
    """``summary.json`` (strict JSON), ``summary.md`` and ``summary.txt`` (the printed table)."""
    out = Path(out_dir)
    storage.write_json(out / "summary.json", summary)
    storage.write_text(out / "summary.md", format_markdown(summary))
    storage.write_text(out / "summary.txt", format_table(summary) + "\n")

