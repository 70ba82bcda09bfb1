"""The HTML report: one self-contained ``RUN/report/index.html`` a person opens from the file system.

Every figure is inlined as a base64 PNG; there is no external CSS, JS, font or request (a
Content-Security-Policy in the page forbids any). It only reads what the stages wrote:
``report/summary.json``, ``plots/*.png``, ``motion/classes.json``, ``segment/`` and ``factorize/``
images, the synthetic world's contact sheets, ``config.yaml`` and every ``stage.json``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vjepa_adapt import storage
from vjepa_adapt.report.run_files import find_pngs, stage_records
from vjepa_adapt.report.summary import explanations, table_cells

REPORT_FILE = "index.html"
MAX_IMAGE_BYTES = 8 * 2**20  # a larger PNG is listed, not inlined
MAX_SKIPPED_ROWS = 300

_CSS = """
:root { --fg: #1b1f24; --muted: #5b636e; --line: #d5dae0; --head: #f1f3f5; --up: #1a7f37; --down: #b42318; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       margin: 0; background: #fff; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-top: 10px; border-top: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p, li { max-width: 900px; }
.meta { color: var(--muted); margin: 0 0 12px; }
nav { font-size: 14px; margin: 10px 0 6px; }
nav a { margin-right: 14px; color: #0b57d0; text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 10px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: right; white-space: nowrap; }
th { background: var(--head); font-weight: 600; }
td:first-child, th:first-child { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[data-dir="asc"]::after { content: " \\25B2"; font-size: 10px; }
table.sortable th[data-dir="desc"]::after { content: " \\25BC"; font-size: 10px; }
tr.reference td { background: #f7f7f9; font-weight: 600; }
td.up { color: var(--up); } td.down { color: var(--down); }
.wide { overflow-x: auto; }
.note { color: var(--muted); font-size: 13px; }
.flag { color: var(--down); font-size: 13px; }
figure { margin: 8px 0 14px; break-inside: avoid; page-break-inside: avoid; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); display: block; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 3px; }
.arm { display: grid; grid-template-columns: minmax(0, 5fr) minmax(0, 6fr); gap: 18px; align-items: start; }
.thumbs { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 14px; }
td.t, th.t { text-align: left; }
pre { background: #f6f8fa; border: 1px solid var(--line); padding: 10px; font-size: 12.5px; overflow-x: auto; }
details summary { cursor: pointer; color: #0b57d0; margin: 6px 0; }
@media (max-width: 900px) { .arm { grid-template-columns: 1fr; } }
@media print {
  body { font-size: 11pt; } main { max-width: none; padding: 0; } nav { display: none; }
  h2 { break-before: auto; break-after: avoid; } h3 { break-after: avoid; }
  table, tr { break-inside: avoid; } th, td { padding: 2px 5px; }
  .wide { overflow: visible; } pre { white-space: pre-wrap; }
  a { color: inherit; text-decoration: none; }
}
"""

# Sort a table by clicking a header (numbers by data-v, else text); opens <details> for printing.
_JS = """
(function () {
  function key(cell) { var v = cell.getAttribute('data-v'); return v === null ? cell.textContent : v; }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, col) {
      th.title = 'click to sort';
      th.addEventListener('click', function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var dir = th.getAttribute('data-dir') === 'asc' ? -1 : 1;
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('data-dir'); });
        th.setAttribute('data-dir', dir === 1 ? 'asc' : 'desc');
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          var nx = parseFloat(x), ny = parseFloat(y);
          if (x === '' || y === '') { return (x === '') - (y === ''); }
          if (!isNaN(nx) && !isNaN(ny)) { return dir * (nx - ny); }
          return dir * String(x).localeCompare(String(y));
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  window.addEventListener('beforeprint', function () {
    document.querySelectorAll('details').forEach(function (d) { d.open = true; });
  });
})();
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img(path: Path, alt: str, caption: str | None = None) -> str:
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        return f'<p class="note">{_e(path.name)}: {size / 2**20:.1f} MB, too large to inline (see the run folder).</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">{cap}</figure>'


def _num(x: Any) -> str:
    return "" if x is None else _e(x)


def _summary_table(summary: Mapping[str, Any]) -> str:
    ref = summary["reference"]
    cols = [("arm", "arm"), ("top1", "top-1"), ("ci", "95% CI"), ("delta", f"Δ vs {ref}"),
            ("delta_ci", "Δ 95% CI"), ("p", "p (exact)"), ("bc", "b / c"), ("macro_f1", "macro-F1"),
            ("linear", "linear top-1"), ("head", "head top-1"), ("n_test", "n test")]
    out = ['<div class="wide"><table id="summary-table" class="sortable"><thead><tr>']
    out += [f'<th data-col="{k}">{_e(label)}</th>' for k, label in cols]
    out.append("</tr></thead><tbody>")
    for arm, r in summary["arms"].items():
        c = table_cells(summary, arm)
        is_ref = arm == ref
        sort = {"arm": arm, "top1": r["top1"], "ci": r["ci_low"], "delta": "" if is_ref else r["delta_vs_frozen"],
                "delta_ci": "" if is_ref else r["delta_ci_low"], "p": "" if is_ref else r["p_value"],
                "bc": "" if is_ref else sum(r["discordant"]), "macro_f1": r["macro_f1"],
                "linear": r["linear"]["top1"] if "linear" in r else "",
                "head": r["head"]["top1"] if "head" in r else "", "n_test": r["n_test"]}
        cls = ""
        if not is_ref:
            cls = "up" if r["delta_ci_low"] > 0 else "down" if r["delta_ci_high"] < 0 else ""
        out.append(f'<tr data-arm="{_e(arm)}"{" class=reference" if is_ref else ""}>')
        for k, _ in cols:
            klass = f' class="{cls}"' if k in ("delta", "delta_ci") and cls else ""
            out.append(f'<td data-v="{_e(sort[k])}"{klass}>{_e(c[k])}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _per_class_table(summary: Mapping[str, Any]) -> str:
    names = summary["class_names"]
    support = summary["arms"][summary["reference"]]["per_class"]
    out = ['<div class="wide"><table class="sortable"><thead><tr><th>arm</th>']
    out += [f"<th>{_e(n)}<br><span class=note>n={_e(support[n]['support'])}</span></th>" for n in names]
    out.append("</tr></thead><tbody>")
    for arm, r in summary["arms"].items():
        out.append(f"<tr><td>{_e(arm)}</td>")
        for n in names:
            acc = r["per_class"][n]["accuracy"]
            out.append(f'<td data-v="{_num(acc)}">{"—" if acc is None else f"{acc:.0%}"}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _per_tag_table(summary: Mapping[str, Any]) -> str:
    """One table: a row per (tag field, value) with its test-clip count, a column per arm."""
    if not summary["tags"]:
        return (f'<p class="note">No tag value has at least {summary["min_tag_count"]} test clips '
                "(or the run has no tags).</p>")
    arms = list(summary["arms"])
    out = ['<div class="wide"><table id="tag-table" class="sortable"><thead><tr><th>tag</th><th class=t>value</th>'
           "<th>n test</th>"]
    out += [f"<th>{_e(a)}</th>" for a in arms]
    out.append("</tr></thead><tbody>")
    for field, vals in summary["tags"].items():
        for v, n in vals.items():
            out.append(f'<tr><td>{_e(field)}</td><td class=t>{_e(v)}</td><td data-v="{n}">{n}</td>')
            for arm in arms:
                t = summary["arms"][arm]["per_tag"].get(field, {}).get(v, {}).get("top1")
                out.append(f'<td data-v="{_num(t)}">{"—" if t is None else f"{t:.0%}"}</td>')
            out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _motion_section(run_dir: Path) -> str:
    path = run_dir / "motion" / "classes.json"
    if not path.is_file():
        return '<p class="note">No motion labels in this run.</p>'
    meta = storage.read_json(path)
    classes = meta.get("classes", [])
    counts = meta.get("counts", {})
    splits = [s for s in ("train", "val", "test") if s in counts] + sorted(set(counts) - {"train", "val", "test"})
    cuts = ", ".join(f"{c:.4g}" for c in meta.get("cuts", []))
    out = [f"<p>{len(classes)} classes: magnitude bin of the <b>{_e(meta.get('magnitude'))}</b> flow × dominant "
           f"<b>{_e(meta.get('direction'))}</b> direction. Magnitude cut points (25/50/75% quantiles of the train "
           f"split, pixels per frame): <b>{_e(cuts)}</b>. Kept {_e(meta.get('num_kept', '?'))} of "
           f"{_e(meta.get('num_clips', '?'))} clips; {_e(meta.get('dropped', 0))} dropped (their class was not "
           "among the kept ones).</p>",
           '<div class="wide"><table class="sortable"><thead><tr><th>class</th>']
    out += [f"<th>{_e(s)}</th>" for s in splits] + ["<th>all</th></tr></thead><tbody>"]
    for c in classes:
        row = [counts.get(s, {}).get(c, 0) for s in splits]
        out.append(f"<tr><td>{_e(c)}</td>" + "".join(f'<td data-v="{n}">{n}</td>' for n in row)
                   + f'<td data-v="{sum(row)}">{sum(row)}</td></tr>')
    out.append("</tbody></table></div>")
    dropped = {k: v for k, v in (meta.get("dropped_by_class") or {}).items() if v}
    if dropped:
        out.append('<p class="note">Dropped by class: ' + ", ".join(f"{_e(k)} {v}" for k, v in
                                                                      sorted(dropped.items(), key=lambda kv: -kv[1]))
                   + "</p>")
    return "".join(out)


def _provenance(run_dir: Path, records: list[tuple[str, Path, dict]]) -> str:
    out = []
    versions: dict[str, set[str]] = {}
    for _, _, rec in records:
        for k, v in (rec.get("versions") or {}).items():
            versions.setdefault(k, set()).add(str(v))
    if versions:
        out.append("<p>Versions: " + "; ".join(f"{_e(k)} {_e(', '.join(sorted(v)))}" for k, v in versions.items())
                   + "</p>")
    total = sum(float(rec.get("seconds") or 0) for _, _, rec in records)
    out.append(f'<p>{len(records)} finished stages, {total:.1f} s of stage time in all (the time each stage took '
               "when it last ran; cached stages keep their time).</p>")
    out.append('<div class="wide"><table id="stage-table" class="sortable"><thead><tr><th>stage</th><th class=t>folder</th>'
               "<th>seconds</th><th>done</th><th>skipped</th><th class=t>hash</th></tr></thead><tbody>")
    skipped = []
    for name, folder, rec in records:
        try:
            rel = folder.relative_to(run_dir)
        except ValueError:
            rel = folder
        sk = rec.get("skipped") or []
        skipped += [(name, s.get("clip"), s.get("reason")) for s in sk]
        secs = float(rec.get("seconds") or 0)
        out.append(f"<tr><td>{_e(name)}</td><td class=t>{_e(rel)}</td><td data-v='{secs}'>{secs:.1f}</td>"
                   f"<td data-v='{_num(rec.get('done'))}'>{_num(rec.get('done'))}</td>"
                   f"<td data-v='{len(sk)}'>{len(sk)}</td><td class=t><code>{_e(rec.get('hash', ''))}</code></td></tr>")
    out.append("</tbody></table></div>")
    out.append(f"<h3>Skipped clips ({len(skipped)})</h3>")
    if skipped:
        out.append('<div class="wide"><table class="sortable"><thead><tr><th>stage</th><th class=t>clip</th><th class=t>reason</th>'
                   "</tr></thead><tbody>")
        for name, clip, reason in skipped[:MAX_SKIPPED_ROWS]:
            out.append(f"<tr><td>{_e(name)}</td><td class=t>{_e(clip)}</td><td class=t>{_e(reason)}</td></tr>")
        out.append("</tbody></table></div>")
        if len(skipped) > MAX_SKIPPED_ROWS:
            out.append(f'<p class="note">… and {len(skipped) - MAX_SKIPPED_ROWS} more (see each stage.json).</p>')
    else:
        out.append("<p>No clip was skipped.</p>")
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        out.append("<h3>Resolved config</h3><details><summary>config.yaml</summary><pre>"
                   f"{_e(cfg.read_text(encoding='utf-8'))}</pre></details>")
    return "".join(out)


def _trainer_caption(rec: dict | None) -> str | None:
    if not rec:
        return None
    extra = rec.get("extra") or {}
    bits = [f"{rec.get('done')} steps"]
    if "best_step" in extra:
        bits.append(f"best checkpoint at step {extra['best_step']}")
    bits.append(f"{float(rec.get('seconds') or 0):.0f} s")
    return ", ".join(bits)


def render_html(run_dir: str | os.PathLike, summary: Mapping[str, Any],
                stage_dirs: Mapping[str, str | os.PathLike] | None = None) -> str:
    """The report page of ``run_dir`` for ``summary`` (as written to ``report/summary.json``)."""
    run = Path(run_dir)
    plots = run / "plots"
    records = stage_records(run, stage_dirs)
    by_name = {name: rec for name, _, rec in records}
    ref, arms = summary["reference"], list(summary["arms"])
    used: set[Path] = set()

    def plot(name: str, alt: str, caption: str | None = None) -> str:
        p = plots / name
        if not p.is_file():
            return ""
        used.add(p)
        return _img(p, alt, caption)

    sections: list[tuple[str, str, str]] = []  # (anchor, title, body)
    k = summary["num_classes"]
    notes = []
    for arm, r in summary["arms"].items():
        notes += [f'<li class="flag">{_e(arm)}: {_e(f)}</li>' for f in r.get("flags", [])]
    table = (_summary_table(summary)
             + f'<p class="note">Top-1 with its BCa 95% bootstrap CI on the {summary["n_test"]} test clips; chance = '
             f"1/{k} = {1 / k:.1%}. Δ = arm − {_e(ref)} on the same test clips, with a paired BCa 95% CI. "
             f"b / c = clips only {_e(ref)} / only the arm got right; p is the exact two-sided McNemar test on "
             "them — with few discordant clips, read Δ by p and b / c, not by the CI alone. "
             + ("Head top-1: the head-only arm's motion_aux head on the test clips by itself. " if any(
                 "head" in r for r in summary["arms"].values()) else "")
             + "Click a column header to sort.</p>"
             + "".join(f'<p class="note">{_e(line)}</p>' for line in explanations(summary))
             + (f"<ul>{''.join(notes)}</ul>" if notes else ""))
    sections.append(("comparison", "Comparison", table))
    figs = plot("top1.png", "top-1 per arm with 95% CI") + plot("delta_forest.png", f"paired delta vs {ref}")
    if figs:
        sections.append(("figures", "Top-1 and Δ", figs))
    sections.append(("per-class", "Per-class accuracy", _per_class_table(summary)))
    sections.append(("per-tag", "Per-tag top-1",
                     f'<p class="note">Test top-1 per value of each tag field with at least '
                     f'{summary["min_tag_count"]} test clips (n = clips with that value; "unknown" left out).</p>'
                     + _per_tag_table(summary)))
    probe_parts = []
    for arm in arms:
        p = summary["arms"][arm].get("probe") or {}
        cap = (f"{p.get('kind')} probe, lr {p.get('lr')}, wd {p.get('weight_decay')}, kept epoch "
               f"{p.get('best_epoch')} of {p.get('epochs')} (val top-1 {float(p.get('val_top1') or 0):.1%}); "
               f"{p.get('n_train')} train / {p.get('n_val')} val clips") if p else None
        body = (plot(f"training_{arm}.png", f"probe curves of {arm}", cap)
                + plot(f"confusion_{arm}.png", f"confusion matrix of {arm}"))
        if body:
            probe_parts.append(f'<h3 id="arm-{_e(arm)}">{_e(arm)}</h3><div class="arm">{body}</div>')
    if probe_parts:
        sections.append(("probes", "Probe of each arm", "".join(probe_parts)))
    trainer = []
    for png in sorted(plots.glob("trainer_*.png")):
        name = png.stem[len("trainer_"):]
        used.add(png)
        trainer.append(f"<h3>{_e(name)}</h3>" + _img(png, f"training curves of {name}", _trainer_caption(by_name.get(name))))
    if trainer:
        sections.append(("training", "Training runs", "".join(trainer)))
    sections.append(("motion", "Motion labels", _motion_section(run)))
    for folder, title in (("segment", "Segmentation"), ("factorize", "Factor datasets")):
        pngs = find_pngs(run / folder)
        if pngs:
            sections.append((folder, title, '<div class="thumbs">' + "".join(
                _img(p, p.stem, str(p.relative_to(run))) for p in pngs) + "</div>"))
    other = [p for p in sorted(plots.glob("*.png")) if p not in used]
    sheets = sorted((run / "synth").glob("*/contact_sheet.png")) if (run / "synth").is_dir() else []
    if other or sheets:
        sections.append(("other", "Clips and other figures", '<div class="thumbs">' + "".join(
            _img(p, p.stem, str(p.relative_to(run))) for p in [*sheets, *other]) + "</div>"))
    sections.append(("provenance", "Provenance", _provenance(run, records)))

    nav = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{_e(t)}</h2>{b}</section>' for a, t, b in sections)
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = f"vjepa-adapt report: {run.resolve().name}"
    meta = (f"Run folder <code>{_e(run.resolve())}</code> · written {when} · {len(arms)} arms · reference "
            f"<b>{_e(ref)}</b> · {summary['n_test']} test clips · {k} motion classes")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>"
            f"<h1>{_e(title)}</h1><p class=\"meta\">{meta}</p><nav>{nav}</nav>{body}</main>"
            f"<script>{_JS}</script></body></html>\n")


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 summary: Mapping[str, Any] | None = None,
                 stage_dirs: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Write ``index.html`` into ``out_dir`` (default ``RUN/report``); ``summary`` defaults to the
    ``summary.json`` there. Returns the page's path."""
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run / "report"
    if summary is None:
        path = out / "summary.json"
        if not path.is_file():
            from vjepa_adapt.errors import BadInputError

            raise BadInputError(f"{path} not found: run `vjepa-adapt compare` first")
        summary = storage.read_json(path)
    page = out / REPORT_FILE
    storage.write_text(page, render_html(run, summary, stage_dirs))
    return page
