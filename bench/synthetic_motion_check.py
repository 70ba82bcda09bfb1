"""Check that the synthetic world's intended motion classes match flow-derived ones.

Generates (or reuses) a world per style, decodes each MP4 with PyAV, runs OpenCV Farnebaeck on 16
adjacent-frame pairs spread evenly over the clip, and derives the probe label exactly as the motion
stage does: foreground flow = flow - that pair's per-pixel median flow; magnitude tier = quantile
bin (25/50/75%, fitted here on all clips of the style) of the foreground mean magnitude (mean over
all pixels and pairs); direction = quadrant of the magnitude-weighted 8-bin foreground direction
histogram (angle = atan2(dy, dx), image y down).

    python bench/synthetic_motion_check.py --out /tmp/motion_check --num-clips 100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import av
import cv2
import numpy as np

from vjepa_adapt.world import MOTION_TIERS, generate_world, load_truth

try:  # cross-check with the pipeline's own motion code when it is installed
    from vjepa_adapt.motion.classes import classify_features, fit_magnitude_cuts
    from vjepa_adapt.motion.features import FG_MAG_MEAN, features_from_flows
except ImportError:
    features_from_flows = None

QUADRANT_OF_BIN = ["left", "up", "up", "right", "right", "down", "down", "left"]  # bins over [-pi, pi)


def decode_gray(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [cv2.cvtColor(f.to_ndarray(format="rgb24"), cv2.COLOR_RGB2GRAY) for f in c.decode(video=0)]


def clip_flows(frames: list[np.ndarray], num_pairs: int = 16) -> np.ndarray:
    """(P, H, W, 2) Farnebaeck flow of adjacent pairs spread evenly over the clip."""
    starts = np.linspace(0, len(frames) - 2, num_pairs).round().astype(int)
    return np.stack([cv2.calcOpticalFlowFarneback(frames[s], frames[s + 1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
                     for s in starts])


def flow_features(frames: list[np.ndarray], num_pairs: int = 16, flows: np.ndarray | None = None
                  ) -> tuple[float, str, np.ndarray]:
    """Independent, spec-exact (foreground mean magnitude, dominant direction, 8-bin histogram)."""
    if flows is None:
        flows = clip_flows(frames, num_pairs)
    mags, hist = [], np.zeros(8)
    for flow in flows:
        fg = flow - np.median(flow.reshape(-1, 2), axis=0)
        mag = np.hypot(fg[..., 0], fg[..., 1])
        ang = np.arctan2(fg[..., 1], fg[..., 0])
        mags.append(float(mag.mean()))
        b = np.clip(((ang + np.pi) / (2 * np.pi) * 8).astype(int), 0, 7)
        hist += np.bincount(b.ravel(), weights=mag.ravel(), minlength=8)
    quad = {q: 0.0 for q in ("right", "up", "left", "down")}
    for i, q in enumerate(QUADRANT_OF_BIN):
        quad[q] += hist[i]
    return float(np.mean(mags)), max(quad, key=quad.get), hist / max(hist.sum(), 1e-12)


def check(out: Path, style: str, num_clips: int, seed: int, width: int, height: int, workers: int) -> dict:
    t0 = time.perf_counter()
    rows = generate_world(out / style, num_clips=num_clips, style=style, seed=seed, width=width,
                          height=height, num_workers=workers, skip_existing=True)
    gen_s = time.perf_counter() - t0
    recs = []
    for r in rows:
        flows = clip_flows(decode_gray(out / style / r["path"]))
        mag, direction, _ = flow_features([], flows=flows)
        truth = load_truth(out / style / r["truth"])
        recs.append({"clip": r["clip_id"], "video": r["video_id"], "cls": r["motion_class"], "mag": mag,
                     "dir": direction, "feat": features_from_flows(flows) if features_from_flows else None,
                     "cov": truth.meta["moving_coverage"], "cam": truth.meta["camera"]["mode"],
                     "light": truth.meta["lighting"], "speed": truth.meta["speed_px"] / width,
                     "tcov": truth.meta["target_coverage"]})
    mags = np.array([x["mag"] for x in recs])
    cuts = np.quantile(mags, [0.25, 0.5, 0.75])
    for x in recs:
        x["flow_cls"] = f"{MOTION_TIERS[int(np.searchsorted(cuts, x['mag'], side='right'))]}_{x['dir']}"
    agree = np.mean([x["flow_cls"] == x["cls"] for x in recs])
    dir_agree = np.mean([x["cls"].split("_")[1] == x["dir"] for x in recs])
    pipeline_agree = _pipeline_agreement(recs, seed) if features_from_flows else None
    tier_agree = np.mean([x["cls"].split("_")[0] == x["flow_cls"].split("_")[0] for x in recs])
    print(f"\n== {style}: {len(recs)} clips, generated in {gen_s:.1f}s; cuts {np.round(cuts, 4)}")
    print(f"agreement {agree:.1%} (tier {tier_agree:.1%}, direction {dir_agree:.1%}); with the pipeline's "
          f"motion code and cuts fitted on a 70% by-video train split: {pipeline_agree}")
    for tier in MOTION_TIERS:
        m = np.array([x["mag"] for x in recs if x["cls"].startswith(tier)])
        c = np.array([x["cov"] for x in recs if x["cls"].startswith(tier)])
        print(f"  {tier:6s} n={len(m):3d} fg-mag [{m.min():.4f}, {m.max():.4f}] median {np.median(m):.4f}"
              f"  moving coverage [{c.min():.3f}, {c.max():.3f}]")
    for x in recs:
        if x["flow_cls"] != x["cls"]:
            print(f"  MISS {x['clip']}: intended {x['cls']} flow {x['flow_cls']} mag {x['mag']:.4f} "
                  f"cov {x['cov']:.3f} cam {x['cam']} {x['light']}")
    for x in recs:
        x.pop("feat", None)
    (out / f"check_{style}.json").write_text(json.dumps(recs, indent=0))
    return {"style": style, "agreement": agree, "pipeline_agreement": pipeline_agree, "cuts": cuts.tolist(),
            "clips_per_s": len(rows) / gen_s}


def _pipeline_agreement(recs: list[dict], seed: int) -> str:
    """Agreement using vjepa_adapt.motion on the same flows, cuts from a by-video train split."""
    videos = sorted({x["video"] for x in recs})
    rng = np.random.default_rng(seed)
    train_videos = set(rng.permutation(videos)[: int(round(0.7 * len(videos)))])
    cuts = fit_magnitude_cuts([x["feat"][FG_MAG_MEAN] for x in recs if x["video"] in train_videos])
    hits = [classify_features(x["feat"], cuts) == x["cls"] for x in recs]
    held = [h for h, x in zip(hits, recs) if x["video"] not in train_videos]
    return f"{np.mean(hits):.1%} (held-out videos {np.mean(held):.1%})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/motion_check"))
    ap.add_argument("--num-clips", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--styles", nargs="+", default=["target", "source"])
    a = ap.parse_args()
    res = [check(a.out, s, a.num_clips, a.seed, a.width, a.height, a.workers) for s in a.styles]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
