"""Compare and report: the summary table (Δ, paired CI, exact p, discordant counts, per class, per
tag, the head's own accuracy), the self-contained HTML report, and that page in a real headless browser.

The fixture is a small run folder written with the pipeline's own writers (``run_probe`` on
synthetic features, the motion writer, tags rows, trainer metrics, stage records), then the real
``plots`` and ``compare`` stage adapters run on it. Its arms: frozen, random_init, pretrain,
pretrain_head and a ``flow_ceiling`` arm no config knows — arms come from the run's probe stages;
frame_shuffled was not run and must be absent.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from vjepa_adapt import storage
from vjepa_adapt.config import PipelineConfig, dump_config
from vjepa_adapt.evaluate.probe import read_predictions, run_probe
from vjepa_adapt.evaluate.stats import sign_flip_p_value
from vjepa_adapt.motion.classes import LabelSet
from vjepa_adapt.motion.stage import write_motion_outputs
from vjepa_adapt.pipeline import StageContext, StageSpec, write_stage_record
from vjepa_adapt.progress import MetricsLog
from vjepa_adapt.report import (
    build_summary,
    discover_arms,
    format_markdown,
    format_table,
    render_html,
)
from vjepa_adapt.report.run_files import read_metrics_log
from vjepa_adapt.report.summary import tag_groups
from vjepa_adapt.stage_result import StageResult
from vjepa_adapt.stages.evaluate import _head_eval, run_compare, run_plots

CLASSES = ["slow_right", "fast_left", "still_up", "medium_down"]
ARMS = {"frozen": 0.6, "random_init": 0.0, "pretrain": 1.6, "pretrain_head": 1.0, "flow_ceiling": 3.0}  # signal
D, HIDDEN = 8, 16
N = {"train": 48, "val": 16, "test": 40}


def _png(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(path)


def _trainer_rows(steps: int, head_only: bool, blocks: int = 4) -> list[dict]:
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "lr": 1e-3, "aux": 1.5 / s, "aux_acc": float("nan") if s == 1 else min(1.0, 0.1 * s),
               "loss": 1.0 / s}
        if not head_only:
            row["jepa"] = 0.8 - 0.01 * s
        if s % 4 == 0:
            row.update(val_aux=1.6 / s, val_centroid_acc=0.25 + 0.02 * s,
                       drift_blocks=[0.0] * blocks if head_only else [0.001 * s * (b + 1) for b in range(blocks)])
            if not head_only:
                row["val_jepa"] = 0.85 - 0.01 * s
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    cfg = PipelineConfig.model_validate({"run": {"out": str(run)}, "probe": {"bootstrap_resamples": 500},
                                         "report": {"min_tag_count": 5}})
    rng = np.random.default_rng(0)
    ids, splits, labels = [], {}, {}
    for split, n in N.items():
        for i in range(n):
            cid = f"{split}_{i:03d}"
            ids.append(cid)
            splits[cid] = split
            labels[cid] = i % len(CLASSES)
    y = np.asarray([labels[c] for c in ids])
    folders: dict[str, Path] = {n: run / n for n in ("clips", "tag", "motion")}
    folders["pretrain"] = run / "pretrain" / "pretrain"
    folders["pretrain_head"] = run / "pretrain_head"

    # motion labels (the real writer)
    label_set = LabelSet(labels={c: CLASSES[labels[c]] for c in ids}, classes=CLASSES, cuts=(0.1, 0.2, 0.4),
                         counts={s: {k: N[s] // 4 for k in CLASSES} for s in N},
                         counts_all={s: {k: N[s] // 4 for k in CLASSES} for s in N}, dropped=3,
                         dropped_by_class={"fast_up": 3}, num_classes=4, min_count_per_split=1)
    write_motion_outputs(folders["motion"], {c: rng.normal(size=23).astype(np.float32) for c in ids}, label_set,
                         splits, skipped=[("bad_clip", "truncated: 3 of 16 frames")])
    # tags: lighting splits the test clips 24 / 16; 'dense' crowds are too rare (3 < 5); weather unknown
    rows = []
    for i, c in enumerate(ids):
        tags = {"lighting": "dusk" if i % 5 < 2 else "bright_daylight", "weather": "unknown",
                "crowd_density": "dense" if c in ("test_000", "test_001", "test_002") else "sparse",
                "notable_objects": ["cow", "auto_rickshaw"] if i % 2 else ["cow"]}
        rows.append({"clip_id": c, "tags": tags, "confidences": {}, "repaired": [], "defaulted": [],
                     "backend": "heuristic"})
    storage.write_jsonl(folders["tag"] / "tags.jsonl", rows)

    # the head-only arm's trained head (the real module, saved as the trainer exports it)
    from safetensors.torch import save_file

    from vjepa_adapt.models.heads import MotionAuxHead

    torch.manual_seed(0)
    head = MotionAuxHead(D, len(CLASSES), reg_dims=13, hidden=HIDDEN).eval()
    (folders["pretrain_head"] / "best").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()},
              str(folders["pretrain_head"] / "best" / "head.safetensors"))

    # one probe per arm (the real probe and its writers); more signal = a better arm
    onehot = np.eye(len(CLASSES))[y]
    for arm, signal in ARMS.items():
        mean = rng.normal(size=(len(ids), D)).astype(np.float32)
        mean[:, : len(CLASSES)] += signal * onehot
        feats = {"clip_ids": np.asarray(ids), "mean": mean, "tokens": np.repeat(mean[:, None], 2, axis=1)}
        if arm == "pretrain_head":
            with torch.no_grad():
                hidden = head(torch.from_numpy(mean))[2].numpy()
            feats["mean"] = np.concatenate([mean, hidden], axis=1)  # as _embed appends the head's hidden vector
        out = run / "probe" / arm
        run_probe(feats, labels, splits, CLASSES, out, kind="linear", epochs=6, batch_size=16, n_resamples=500)
        if arm == "pretrain_head":
            _head_eval(folders["pretrain_head"] / "best" / "head.safetensors", feats, labels, splits, CLASSES, out,
                       n_resamples=500, seed=0)
        folders[f"embed/{arm}"] = run / "embed" / arm
        folders[f"probe/{arm}"] = out
    # training logs: JEPA arm, head-only arm (with a torn last line, as a killed writer leaves)
    for name, head_only in (("pretrain", False), ("pretrain_head", True)):
        log = MetricsLog(folders[name])
        for row in _trainer_rows(12, head_only):
            log.write(row)
        log.close()
    with open(folders["pretrain_head"] / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 13, "lo')
    _png(run / "segment" / "overlay_clip0.png", 1)
    _png(run / "factorize" / "grids" / "layout_grid.png", 2)
    storage.write_text(run / "config.yaml", dump_config(cfg))
    folders["plots"] = run / "plots"
    folders["compare"] = run / "report"
    for name, folder in folders.items():
        if name in ("plots", "compare"):
            continue
        res = StageResult(done=len(ids))
        if name == "embed/frozen":
            res.skip("bad_clip", "truncated: 3 of 16 frames")
        folder.mkdir(parents=True, exist_ok=True)
        write_stage_record(folder, name, "0" * 16, StageSpec(name, lambda ctx: res), cfg, res, 1.25)

    for stage in ("plots", "compare"):
        ctx = StageContext(cfg=cfg, run_dir=run, out_dir=folders[stage], folders=folders)
        res = (run_plots if stage == "plots" else run_compare)(ctx)
        write_stage_record(folders[stage], stage, "1" * 16, StageSpec(stage, run_plots), cfg, res, 0.5)
    return run


def _summary(run: Path) -> dict:
    return json.loads((run / "report" / "summary.json").read_text())


# ---------------------------------------------------------------------------------------------
# summary.json


def test_summary_has_every_arm_of_the_run_and_no_other(run):
    s = _summary(run)
    assert list(s["arms"]) == list(ARMS)  # graph order; the unknown flow_ceiling arm is found too
    assert "frame_shuffled" not in s["arms"] and "not_built" not in s
    assert s["reference"] == "frozen" and s["num_classes"] == 4 and s["n_test"] == N["test"]
    for row in s["arms"].values():
        assert set(row) >= {"top1", "ci_low", "ci_high", "delta_vs_frozen", "delta_ci_low", "delta_ci_high",
                            "p_value", "discordant", "n_test", "num_classes", "macro_f1", "per_class", "per_tag"}
        assert 0 <= row["ci_low"] <= row["top1"] <= row["ci_high"] <= 1
        assert row["delta_ci_low"] <= row["delta_vs_frozen"] <= row["delta_ci_high"]
    assert s["arms"]["flow_ceiling"]["top1"] > s["arms"]["random_init"]["top1"]
    # strict JSON: no NaN anywhere
    json.loads((run / "report" / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_delta_p_and_discordant_counts_match_the_predictions(run):
    s = _summary(run)
    _, y_ref, p_ref = read_predictions(run / "probe" / "frozen" / "predictions.csv")
    ref_ok = p_ref == y_ref
    for arm in ARMS:
        _, y, p = read_predictions(run / "probe" / arm / "predictions.csv")
        ok = p == y
        b, c = int(np.sum(ref_ok & ~ok)), int(np.sum(~ref_ok & ok))
        row = s["arms"][arm]
        assert row["discordant"] == [b, c]
        assert row["delta_vs_frozen"] == pytest.approx((c - b) / len(y))
        assert row["p_value"] == pytest.approx(sign_flip_p_value(b, c))
        assert row["top1"] == pytest.approx(ok.mean())
    assert s["arms"]["frozen"]["discordant"] == [0, 0] and s["arms"]["frozen"]["p_value"] == 1.0


def test_per_class_and_per_tag(run):
    s = _summary(run)
    _, y, p = read_predictions(run / "probe" / "pretrain" / "predictions.csv")
    pc = s["arms"]["pretrain"]["per_class"]
    for k, name in enumerate(CLASSES):
        assert pc[name]["support"] == int(np.sum(y == k))
        assert pc[name]["accuracy"] == pytest.approx(np.mean(p[y == k] == k))
    # lighting: both values reach 5 test clips; crowd 'dense' (3 clips) and weather 'unknown' do not show
    assert set(s["tags"]) == {"lighting", "crowd_density", "notable_objects"}
    assert s["tags"]["crowd_density"] == {"sparse": N["test"] - 3}
    assert s["tags"]["notable_objects"] == {"cow": N["test"], "auto_rickshaw": N["test"] // 2}
    assert sum(s["tags"]["lighting"].values()) == N["test"]
    ids, y, p = read_predictions(run / "probe" / "frozen" / "predictions.csv")
    tags = {r["clip_id"]: r["tags"] for r in storage.read_jsonl(run / "tag" / "tags.jsonl")}
    dusk = [i for i, c in enumerate(ids) if tags[c]["lighting"] == "dusk"]
    cell = s["arms"]["frozen"]["per_tag"]["lighting"]["dusk"]
    assert cell == {"top1": pytest.approx(np.mean(p[dusk] == y[dusk])), "n": len(dusk)}


def test_tag_groups_rules():
    tags = {"a": {"f": "x", "g": ["p", "q"]}, "b": {"f": "x", "g": ["p"]}, "c": {"f": "unknown", "g": "p"}}
    assert tag_groups(["a", "b", "c"], tags, 2) == {"f": {"x": ["a", "b"]}, "g": {"p": ["a", "b", "c"]}}
    assert tag_groups(["a", "b", "c"], {}, 1) == {}


def test_head_only_arm_has_the_heads_own_test_accuracy(run):
    s = _summary(run)
    head = s["arms"]["pretrain_head"]["head"]
    rows = (run / "probe" / "pretrain_head" / "head_predictions.csv").read_text().splitlines()[1:]
    assert head["n_test"] == len(rows) == N["test"]
    assert head["top1"] == pytest.approx(np.mean([int(r.split(",")[3]) for r in rows]))
    assert head["ci_low"] <= head["top1"] <= head["ci_high"]
    assert all("head" not in s["arms"][a] for a in ARMS if a != "pretrain_head")


def test_reference_arm_is_configurable_and_must_exist(run):
    dirs = discover_arms(run, reference="pretrain")
    assert list(dirs)[0] == "pretrain" and set(dirs) == set(ARMS)
    s = build_summary(dirs, "pretrain", n_resamples=200)
    assert s["arms"]["pretrain"]["delta_vs_frozen"] == 0.0
    assert s["arms"]["frozen"]["delta_vs_frozen"] == pytest.approx(-_summary(run)["arms"]["pretrain"]["delta_vs_frozen"])
    from vjepa_adapt.errors import BadInputError

    with pytest.raises(BadInputError, match="frame_shuffled"):
        build_summary(dirs, "frame_shuffled", n_resamples=200)


def test_reference_arm_not_in_the_graph_fails_before_any_work(tmp_path):
    from vjepa_adapt.config import load_config
    from vjepa_adapt.errors import ConfigError
    from vjepa_adapt.stages.graph import build_graph

    cfg = load_config("demo", [f"run.out={tmp_path}", "report.reference_arm=no_such_arm"])
    graph = build_graph(cfg)
    with pytest.raises(ConfigError, match="report.reference_arm"):
        graph.check_requirements(cfg, ["compare"])


def test_printed_table_and_markdown(run):
    s = _summary(run)
    table = format_table(s)
    header = table.splitlines()[0]
    for col in ("top-1", "95% CI", "Δ vs frozen", "p", "b/c", "macro-F1", "head", "n_test"):
        assert col in header
    assert "not built" not in table.lower()
    b, c = s["arms"]["pretrain"]["discordant"]
    assert f"{b}/{c}" in next(line for line in table.splitlines() if line.startswith("pretrain "))
    md = (run / "report" / "summary.md").read_text()
    assert md == format_markdown(s)
    assert md.count("\n| ") >= len(ARMS) and "## Per-tag top-1" in md and "| lighting | dusk | 16 |" in md
    assert (run / "report" / "summary.txt").read_text().strip() == table


# ---------------------------------------------------------------------------------------------
# plots and the HTML page (static checks)


def test_plots_include_training_curves_of_trained_arms(run):
    from PIL import Image

    for name in ("trainer_pretrain.png", "trainer_pretrain_head.png", "training_flow_ceiling.png",
                 "confusion_pretrain_head.png", "top1.png", "delta_forest.png"):
        with Image.open(run / "plots" / name) as im:
            assert im.size[0] >= 600 and im.size[1] >= 300
    assert not (run / "plots" / "training_frame_shuffled.png").exists()
    rows = read_metrics_log(run / "pretrain_head" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))  # the torn line is skipped


def test_html_is_self_contained(run):
    page = (run / "report" / "index.html").read_text()
    assert "Content-Security-Policy" in page
    srcs = re.findall(r'\bsrc="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'\b(href|src)="(https?:|//|file:)', page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    for s in srcs:  # every inlined image is a whole PNG
        data = base64.b64decode(s.split(",", 1)[1])
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data.endswith(b"IEND\xaeB`\x82")
    for text in ("flow_ceiling", "training curves of pretrain_head", "overlay_clip0", "layout_grid",
                 "truncated: 3 of 16 frames", "0.1, 0.2, 0.4", "config.yaml", "Per-tag top-1", "dusk"):
        assert text in page, text
    assert "frame_shuffled" not in re.sub(r"<details>.*?</details>", "", page, flags=re.S)  # only in config.yaml
    # 5 arms × (probe curves + confusion) + bars + forest + 2 trainer + segment + factor
    assert len(srcs) == 2 * len(ARMS) + 2 + 2 + 2


def test_report_can_be_rendered_from_the_run_folder_alone(run):
    page = render_html(run, _summary(run))  # no graph: stage records found by walking the folder
    assert "probe/flow_ceiling" in page and "embed/frozen" in page


# ---------------------------------------------------------------------------------------------
# the page in a real browser (Debian's chromium; .ci/run installs it where missing)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars"]

# Injected at the top of <head> of a copy of the page: records errors (script, image, CSP), then
# on load checks every image, the arms in the table, and that sorting by each header works.
_CHECK = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push('error: ' + (e.message || (e.target && e.target.tagName + ' failed to load')));
}, true);
window.addEventListener('securitypolicyviolation', function (e) {
  window.__errors.push('csp: ' + e.violatedDirective + ' ' + e.blockedURI);
});
(function () {
  var orig = console.error;
  console.error = function () { window.__errors.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); orig.apply(console, arguments); };
})();
window.addEventListener('load', function () {
  var out = {};
  out.images = Array.prototype.map.call(document.images, function (i) {
    return {alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width};
  });
  var rows = function () { return Array.prototype.map.call(document.querySelectorAll('#summary-table tbody tr'),
                                                            function (r) { return r.getAttribute('data-arm'); }); };
  out.arms = rows();
  try {
    var th = document.querySelector('#summary-table th[data-col="top1"]');
    th.click();
    out.top1_asc = Array.prototype.map.call(document.querySelectorAll('#summary-table tbody tr td:nth-child(2)'),
                                            function (td) { return parseFloat(td.getAttribute('data-v')); });
    th.click();
    out.top1_desc = Array.prototype.map.call(document.querySelectorAll('#summary-table tbody tr td:nth-child(2)'),
                                             function (td) { return parseFloat(td.getAttribute('data-v')); });
    document.querySelectorAll('table.sortable th').forEach(function (h) { h.click(); });
    out.arms_after_sort = rows().sort();
  } catch (e) { window.__errors.push('sort: ' + e); }
  out.scroll_width = document.documentElement.scrollWidth;
  out.errors = window.__errors;
  var pre = document.createElement('pre');
  pre.id = '__check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium; .ci/run installs it before make test)")
    return exe


def _run_chromium(exe: str, profile: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = _chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")
    try:
        probe = _run_chromium(exe, profile, "--dump-dom", "about:blank", timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"chromium cannot run here: {err}")
    if probe.returncode != 0 or "<html" not in probe.stdout:
        tail = " | ".join(probe.stderr.strip().splitlines()[-3:])
        pytest.skip(f"chromium cannot run here (exit {probe.returncode}): {tail}")
    return exe, profile


def _console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def _check_page(browser, page: str, folder: Path) -> tuple[dict, list[str]]:
    """Load ``page`` (HTML text) from ``folder`` in headless chromium with the check script injected;
    returns what the script found and the console lines chromium logged."""
    import html as _html

    exe, profile = browser
    checked = folder / "index.html"
    folder.mkdir(parents=True, exist_ok=True)
    checked.write_text(page.replace("<head>", "<head>" + _CHECK, 1))
    res = _run_chromium(exe, profile, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000",
                        "--window-size=1280,1000", "--dump-dom", checked.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r'<pre id="__check">(.*?)</pre>', res.stdout, re.S)
    assert m, "the check script did not run (page failed to load?): " + res.stderr[-2000:]
    return json.loads(_html.unescape(m.group(1))), _console_messages(res.stderr)


def test_browser_check_catches_a_broken_page(browser, tmp_path):
    """The harness itself: a script error, an image that does not decode and a blocked request are caught."""
    from vjepa_adapt.report.html import _CSP

    page = (f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{_CSP}"></head><body>'
            '<img alt="bad" src="data:image/png;base64,AAAA"><img alt="remote" src="http://127.0.0.1:9/x.png">'
            "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    out, console = _check_page(browser, page, tmp_path / "broken")
    assert any("boom" in e for e in out["errors"]) and any("undefinedFunction" in e for e in out["errors"])
    assert any(e.startswith("csp:") for e in out["errors"])
    assert {i["alt"] for i in out["images"] if i["w"] == 0} == {"bad", "remote"}
    assert any("undefinedFunction" in line for line in console)


def test_report_in_a_headless_browser(run, browser, tmp_path):
    page = (run / "report" / "index.html").read_text()
    # the copy lives elsewhere: a page that reached for a file next to it would break here
    out, console = _check_page(browser, page, tmp_path / "elsewhere")
    assert out["errors"] == []
    assert console == []
    summary = _summary(run)
    assert out["arms"] == list(summary["arms"])
    assert out["arms_after_sort"] == sorted(summary["arms"])
    assert out["top1_asc"] == sorted(out["top1_asc"]) and out["top1_desc"] == sorted(out["top1_desc"], reverse=True)
    assert len(out["images"]) == len(re.findall(r"<img ", page)) > 0
    for img in out["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
        assert img["shown"] <= 1280, img  # scaled to the page, never wider than the window
    assert out["scroll_width"] <= 1280  # no horizontal scrolling of the page itself

    # the page as a person sees it; looked at by eye when this test was written
    exe, profile = browser
    shot = tmp_path / "report.png"
    res = _run_chromium(exe, profile, "--window-size=1280,4000", f"--screenshot={shot}", (run / "report" /
                                                                                            "index.html").as_uri())
    assert res.returncode == 0 and shot.stat().st_size > 50_000, res.stderr[-2000:]
    if os.environ.get("REPORT_SCREENSHOT"):  # to look at it: REPORT_SCREENSHOT=/tmp/shot.png pytest ...
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])
