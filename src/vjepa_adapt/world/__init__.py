"""The synthetic street world: seeded, procedural street clips with full ground truth.

This package is the test oracle and the embedded default, not part of the real data path (that is
``vjepa_adapt.data``). One module per concept: ``style`` (the two styles, vocabulary), ``geometry``
(plan, frame/canvas, things), ``layout`` (the scene and its light), ``agents``, ``camera``,
``render`` (frames + truth of one clip), ``truth`` (the ground-truth format), ``sprites`` (the
drawings), ``generate`` (plan, render in parallel, manifest, contact sheet).

A side view of a street: shop fronts and buildings, a far pavement, a road with lanes, a near
pavement; poles, overhead wires, signs, stalls and parked vehicles (layout); pedestrians, cows,
auto-rickshaws, cars and two-wheelers (agents) that move, stop, turn and pass each other; a camera
that holds still, pans, pushes forward (zoom) or shakes; day or dusk light. Two styles:
``source`` (sparse, orderly, muted; a fixed CCTV-like camera, daylight, slow traffic) and ``target``
(dense, mixed, colourful, cluttered; a handheld walking-tour camera that pans, pushes and shakes,
dusk, traffic about twice as fast). Those differences are the domain gap the demo measures: the
base encoder learns motion on the source style and loses accuracy on the target style.

Every clip is generated *for* a motion class ``<tier>_<direction>`` (the probe's labels, see
SPEC "Motion classes"): its moving agents travel in that direction at that tier's speed; their
visible share of the frame is held near a per-style target and the clip's speed is fine-tuned so
that speed x visible moving coverage (~ the foreground flow magnitude) lands on the tier's
target, keeping tiers well apart. Speeds are fractions of the frame width per frame, so the world
behaves the same at any resolution. bench/synthetic_motion_check.py measures the agreement.

A *video* is one scene layout (buildings, layout objects, lighting) drawn from ``(seed, style,
video index)``; its clips share that layout and differ in agents, motion class and camera.

Output of :func:`generate_world` (paths in the manifest are relative to the manifest's folder)::

    out_dir/manifest.jsonl            one line per clip: clip_id, path, video_id, style, motion_class, truth
    out_dir/videos/<clip_id>.mp4      H.264
    out_dir/truth/<clip_id>.truth.npz ground truth (see :class:`Truth`, :func:`load_truth`)
    out_dir/contact_sheet.png         a few clips x frames with instance-mask overlays
"""

from vjepa_adapt.world.generate import (
    WorldClip,
    generate_world,
    plan_world,
    write_world_contact_sheet,
)
from vjepa_adapt.world.geometry import ClipPlan
from vjepa_adapt.world.render import render_clip
from vjepa_adapt.world.style import (
    AGENT_CATEGORIES,
    CAMERA_MODES,
    CATEGORIES,
    DIRECTION_VECTOR,
    LAYOUT_CATEGORIES,
    MOTION_DIRECTIONS,
    MOTION_TIERS,
    ROLES,
    STYLES,
    TIER_SPEED,
    tier_speed,
)
from vjepa_adapt.world.truth import (
    TRUTH_FORMAT_VERSION,
    Truth,
    find_interactions,
    load_truth,
    save_truth,
)

__all__ = [
    "AGENT_CATEGORIES", "CAMERA_MODES", "CATEGORIES", "DIRECTION_VECTOR", "LAYOUT_CATEGORIES", "MOTION_DIRECTIONS",
    "MOTION_TIERS", "ROLES", "STYLES", "TIER_SPEED", "TRUTH_FORMAT_VERSION", "ClipPlan", "Truth", "WorldClip",
    "find_interactions", "generate_world", "load_truth", "plan_world", "render_clip", "save_truth", "tier_speed",
    "write_world_contact_sheet",
]
