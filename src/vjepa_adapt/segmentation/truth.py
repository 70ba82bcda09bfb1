"""Scores of a segmentation against the synthetic world's ground truth (tests, ``extra.truth``).

Per clip, counts are collected by :func:`score_clip`; :func:`aggregate` turns the counts of many
clips into the four scores (pooled over clips, not averaged per clip):

- ``mask_iou``: mean IoU of matched agent instances. Per frame, the ground-truth moving agents are
  matched to the predicted instances (any role) greedily by IoU, highest first, one-to-one, IoU > 0.
  ``agent_recall_50`` (the share of ground-truth agent instances matched with IoU >= 0.5) is
  reported next to it, so a segmenter that finds only the easy agents cannot hide behind the mean.
- ``tracklet_purity``: every frame of a tracklet is labelled with the object it follows there (the
  object with most pixels in its mask, if it has at least :data:`OWNER_MIN_SHARE` of them, else 0 =
  background); a tracklet's purity is the share of its frames whose label is its most frequent
  label. Pooled over frames of the tracklets that follow an object over the clip (same rule on all
  its pixels; tracklets on background are trivially pure and left out).
- ``agent_layout_accuracy``: a tracklet is truly an agent when moving-agent pixels (of any agents)
  make up at least :data:`OWNER_MIN_SHARE` of its pixels over the clip, else layout; the share of
  tracklet frames whose predicted role (agent / layout) is right. The filter is judged on whether
  the region it tracks moves by itself; whether one region holds one agent is ``mask_iou``'s and
  ``tracklet_purity``'s business. ``agent_layout_accuracy_single`` is the stricter variant: the
  true role is that of the single object with most pixels in the tracklet if it has at least
  :data:`OWNER_MIN_SHARE` of them (else background), so a blob of three merged cars with a lot of
  road in it counts as background.
- ``interaction_recall``: the share of ground-truth interactions (agent pairs that come close) for
  which a predicted interaction joins the two tracklets whose objects are that pair, overlapping
  the true window in time. ``interaction_precision`` alongside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from vjepa_adapt.segmentation.agents import AGENT
from vjepa_adapt.segmentation.masks import ClipMasks

# A tracklet follows the object that covers most of it, if that object covers at least this share of
# its pixels (else it follows background). A loose mask around a walking person (60% road) still
# follows the person: its role is judged on what it follows, its looseness is mask_iou's business.
OWNER_MIN_SHARE = 0.25
COUNT_KEYS = ("iou_sum", "iou_n", "agent_instances", "agent_hits_50", "purity_hits", "purity_frames",
              "role_correct", "role_correct_single", "role_frames", "inter_found", "inter_total", "pred_inter_ok", "pred_inter")


def _truth_maps(masks: ClipMasks, truth: Any) -> np.ndarray:
    """The truth instance maps at the segmented frames, at the masks' size -> (T, H, W)."""
    idx = np.clip(masks.frame_indices, 0, truth.instance_map.shape[0] - 1)
    maps = truth.instance_map[idx]
    h, w = masks.labels.shape[1:]
    if maps.shape[1:] != (h, w):
        maps = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) for m in maps.astype(np.uint16)])
    return maps.astype(np.int64)


def _greedy_ious(iou: np.ndarray) -> list[float]:
    out: list[float] = []
    if iou.size == 0:
        return out
    used_r: set[int] = set()
    used_c: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        r, c = np.unravel_index(flat, iou.shape)
        if iou[r, c] <= 0:
            break
        if r in used_r or c in used_c:
            continue
        used_r.add(int(r))
        used_c.add(int(c))
        out.append(float(iou[r, c]))
    return out


def _owner(pixel_counts: np.ndarray, min_share: float = OWNER_MIN_SHARE) -> int:
    """The object (id >= 1) with most pixels in a tracklet if it has ``min_share`` of them, else 0 (background)."""
    if len(pixel_counts) < 2 or pixel_counts.sum() == 0:
        return 0
    best = int(pixel_counts[1:].argmax()) + 1
    return best if pixel_counts[best] >= min_share * pixel_counts.sum() else 0


def score_clip(masks: ClipMasks, truth: Any) -> dict[str, float]:
    """Raw counts of one clip (see :data:`COUNT_KEYS`); combine clips with :func:`aggregate`."""
    maps = _truth_maps(masks, truth)
    is_agent = np.concatenate([[False], np.asarray(truth.is_agent, bool)])  # index = truth id
    n_obj = len(is_agent)
    c = dict.fromkeys(COUNT_KEYS, 0.0)
    labels = masks.labels.astype(np.int64)
    # mask IoU of matched agent instances
    for t in range(labels.shape[0]):
        tids = [i for i in np.unique(maps[t]) if i and is_agent[i]]
        pids = [i for i in np.unique(labels[t]) if i]
        if not tids:
            continue
        if pids:
            joint = np.bincount(maps[t].ravel() * (labels.max() + 1) + labels[t].ravel(),
                                minlength=n_obj * (labels.max() + 1)).reshape(n_obj, labels.max() + 1)
            ta, pa = joint.sum(1), joint.sum(0)
            inter = joint[np.ix_(tids, pids)].astype(np.float64)
            iou = inter / (ta[tids][:, None] + pa[pids][None, :] - inter)
            matched = _greedy_ious(iou)
        else:
            matched = []
        c["iou_sum"] += sum(matched)
        c["iou_n"] += len(matched)
        c["agent_instances"] += len(tids)
        c["agent_hits_50"] += sum(v >= 0.5 for v in matched)
    # per-tracklet majority objects: per frame and overall
    owner: dict[int, int] = {}
    for row in masks.tracklets:
        tid = int(row["id"])
        sel = labels == tid
        if not sel.any():
            continue
        frames_seen = np.flatnonzero(sel.any(axis=(1, 2)))
        per_frame = [_owner(np.bincount(maps[t][sel[t]], minlength=n_obj)) for t in frames_seen]
        counts_px = np.bincount(maps[sel], minlength=n_obj)
        overall = _owner(counts_px)
        truly_agent = counts_px[is_agent].sum() >= OWNER_MIN_SHARE * counts_px.sum()
        owner[tid] = overall
        if overall:
            counts = np.bincount(per_frame, minlength=n_obj)
            c["purity_hits"] += counts.max()
            c["purity_frames"] += len(per_frame)
        predicted_agent = row.get("role") == AGENT
        c["role_correct"] += len(per_frame) * float(predicted_agent == bool(truly_agent))
        c["role_correct_single"] += len(per_frame) * float(predicted_agent == bool(is_agent[overall]))
        c["role_frames"] += len(per_frame)
    # interactions
    fi = masks.frame_indices
    pred = [(owner.get(int(p["a"]), 0), owner.get(int(p["b"]), 0), int(fi[p["start"]]), int(fi[p["end"] - 1]) + 1)
            for p in masks.interactions]
    true = [(int(q["a"]), int(q["b"]), int(q["start"]), int(q["end"])) for q in truth.interactions]

    def joins(p: tuple[int, int, int, int], q: tuple[int, int, int, int]) -> bool:
        return {p[0], p[1]} == {q[0], q[1]} and p[2] < q[3] and q[2] < p[3]

    c["inter_total"] = len(true)
    c["inter_found"] = sum(any(joins(p, q) for p in pred) for q in true)
    c["pred_inter"] = len(pred)
    c["pred_inter_ok"] = sum(any(joins(p, q) for q in true) for p in pred)
    return c


def aggregate(counts: Sequence[dict[str, float]]) -> dict[str, float | int | None]:
    """The four scores (and their companions) pooled over clips; None where nothing was counted."""
    tot = {k: sum(c[k] for c in counts) for k in COUNT_KEYS}

    def ratio(a: str, b: str) -> float | None:
        return round(float(tot[a]) / float(tot[b]), 4) if tot[b] else None

    return {
        "mask_iou": ratio("iou_sum", "iou_n"),
        "tracklet_purity": ratio("purity_hits", "purity_frames"),
        "agent_layout_accuracy": ratio("role_correct", "role_frames"),
        "agent_layout_accuracy_single": ratio("role_correct_single", "role_frames"),
        "interaction_recall": ratio("inter_found", "inter_total"),
        "agent_recall_50": ratio("agent_hits_50", "agent_instances"),
        "interaction_precision": ratio("pred_inter_ok", "pred_inter"),
        "clips": len(counts),
        "truth_interactions": int(tot["inter_total"]),
    }
