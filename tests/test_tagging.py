"""The tag stage: taxonomy validation, strict parsing + repair, prompt, the three backends, the stage."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from vjepa_adapt.errors import BadInputError, ConfigError, WeightsError
from vjepa_adapt.tagging import (
    TagFailure,
    build_backend,
    build_prompt,
    load_tags,
    load_taxonomy,
    parse_tags,
    tag_clips,
)
from vjepa_adapt.tagging.frames import select_frames
from vjepa_adapt.tagging.heuristic import (
    HeuristicBackend,
    bin_index,
    measure_blockiness,
    threshold_confidence,
)
from vjepa_adapt.tagging.openai_server import OpenAIServerBackend
from vjepa_adapt.tagging.parse import coerce_confidence, extract_json_text
from vjepa_adapt.tagging.taxonomy import build_taxonomy


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy()


def good_reply(tax, **override) -> dict:
    """A reply that answers every field with its first value and confidence 0.8."""
    out = {}
    for f in tax.fields:
        out[f.name] = {"value": f.values[0] if f.kind == "single" else [f.values[0], f.values[1]], "confidence": 0.8}
    out.update(override)
    return out


# ----------------------------------------------------------------------------- taxonomy


def test_default_taxonomy_has_reference_fields(tax):
    single = ["scene_type", "time_of_day", "weather", "crowd_density", "traffic_density", "traffic_mix",
              "pedestrian_vehicle_separation", "road_surface", "infrastructure_quality", "road_encroachment",
              "vegetation", "lighting", "video_quality"]
    assert tax.names == tuple(single + ["road_layout", "notable_objects"])
    for name in single:
        assert tax.field(name).kind == "single"
    assert tax.field("road_layout").kind == "multi" and tax.field("notable_objects").kind == "multi"
    assert all("unknown" in f.values for f in tax.fields)
    assert tax.field("time_of_day").synonyms["night_time"] == "night"


def _spec(**field):
    base = {"kind": "single", "values": ["a", "b", "unknown"]}
    base.update(field)
    return {"version": 1, "fields": {"weather": base}}


@pytest.mark.parametrize(
    "raw, needle",
    [
        (_spec(values=["a", "b"]), "'weather': 'values' must include 'unknown'"),
        (_spec(kind="several"), "'weather': 'kind'"),
        (_spec(synonyms={"x": "zzz"}), "'weather': synonym 'x' maps to 'zzz'"),
        (_spec(colour="red"), "'weather': unknown key(s) ['colour']"),
        (_spec(values=["a", "a", "unknown"]), "duplicate value(s) ['a']"),
        (_spec(synonyms={False: "a"}), "synonym key False must be a string"),
        ({"fields": {"weather": _spec()["fields"]["weather"]}, "extra": 1}, "unknown top-level key(s) ['extra']"),
        ({"fields": {}}, "'fields' must be a non-empty mapping"),
        ({"default_confidence": 2.0, "fields": _spec()["fields"]}, "'default_confidence'"),
    ],
)
def test_taxonomy_validation_names_the_problem(raw, needle):
    with pytest.raises(ConfigError) as err:
        build_taxonomy(raw)
    assert needle in str(err.value)


def test_load_taxonomy_from_path_and_errors(tmp_path):
    p = tmp_path / "tax.yaml"
    p.write_text("fields:\n  mood:\n    kind: single\n    values: [calm, busy, unknown]\n    synonyms: {hectic: busy}\n")
    t = load_taxonomy(p)
    assert t.names == ("mood",) and t.source == str(p)
    assert parse_tags('{"mood": "Hectic"}', t).tags == {"mood": "busy"}
    with pytest.raises(ConfigError, match="not found"):
        load_taxonomy(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("fields: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_taxonomy(tmp_path / "bad.yaml")


# ----------------------------------------------------------------------------- prompt


def test_prompt_lists_every_field_and_value(tax):
    prompt = build_prompt(tax)
    for f in tax.fields:
        assert f"- {f.name} (" in prompt
        for v in f.values:
            assert v in prompt
    assert "JSON" in prompt and "a list of any of" in prompt


# ----------------------------------------------------------------------------- parsing


def test_parse_clean_reply_has_no_repairs_or_defaults(tax):
    r = parse_tags(json.dumps(good_reply(tax)), tax)
    assert r.repaired == [] and r.defaulted == [] and r.json_error is None
    assert r.tags["scene_type"] == "market" and r.tags["road_layout"] == ["straight", "curve"]
    assert all(c == 0.8 for c in r.confidences.values())


def test_parse_extracts_json_from_fences_and_prose(tax):
    body = json.dumps(good_reply(tax), indent=1)
    for text in (f"```json\n{body}\n```", f"Sure! Here are the tags:\n{body}\nHope this helps {{:)"):
        r = parse_tags(text, tax)
        assert r.defaulted == [] and r.repaired == [] and r.tags["time_of_day"] == "day"
    assert extract_json_text("no braces here") is None


def test_parse_repairs_broken_json(tax):
    text = "Answer: {'scene_type': 'market', weather: {value: 'rain', confidence: 0.9,}, 'road_layout': ['curve',],}"
    r = parse_tags(text, tax)
    assert r.tags["scene_type"] == "market" and r.tags["weather"] == "rain" and r.tags["road_layout"] == ["curve"]
    assert r.confidences["weather"] == 0.9
    assert {"json: single quotes", "json: unquoted keys", "json: trailing commas"} <= set(r.repaired)
    assert r.is_repaired and "time_of_day" in r.defaulted  # not given → defaulted


def test_parse_closes_a_truncated_reply(tax):
    full = json.dumps(good_reply(tax))
    cut = full[: full.index('"lighting"') + 15]  # cut inside the lighting entry
    r = parse_tags(cut, tax)
    assert "json: truncated reply closed" in r.repaired
    assert r.tags["scene_type"] == "market" and r.tags["vegetation"] == "none"
    assert set(r.defaulted) >= {"video_quality", "road_layout", "notable_objects"}


def test_parse_garbage_defaults_everything(tax):
    r = parse_tags("W\x00b garbage { not json at all", tax)
    assert r.json_error and set(r.defaulted) == set(tax.names)
    assert all(v in ("unknown", ["unknown"]) for v in r.tags.values())
    assert all(c == 0.0 for c in r.confidences.values())


def test_parse_normalises_values_and_keys(tax):
    reply = good_reply(
        tax,
        time_of_day={"value": "Night time", "confidence": 0.7},
        scene_type="  Bazaar ",
        traffic_mix={"value": "MIXED MOTORISED", "confidence": 0.6},
        notable_objects=["Cows", "AUTO-RICKSHAW", "buses", "unicorn"],
    )
    reply["Road Surface"] = reply.pop("road_surface")
    r = parse_tags(reply, tax)
    assert r.tags["time_of_day"] == "night" and r.confidences["time_of_day"] == 0.7
    assert r.tags["scene_type"] == "market"
    assert r.tags["traffic_mix"] == "mixed_motorised"
    assert r.tags["notable_objects"] == ["cow", "auto_rickshaw", "bus"]
    assert r.tags["road_surface"] == "paved_good"
    joined = " | ".join(r.repaired)
    assert "'Night time' → 'night'" in joined and "'unicorn'" in joined and "key 'Road Surface'" in joined
    assert "traffic_mix" not in joined  # case/space-only differences are not repairs
    assert r.defaulted == []


def test_parse_unknown_and_missing_values_default(tax):
    reply = good_reply(tax, weather={"value": "purple", "confidence": 0.9}, road_layout=["spaceport"])
    del reply["vegetation"]
    r = parse_tags(reply, tax)
    assert r.tags["weather"] == "unknown" and r.confidences["weather"] == 0.0
    assert r.tags["road_layout"] == ["unknown"]
    assert sorted(r.defaulted) == ["road_layout", "vegetation", "weather"]


def test_parse_multi_choice_forms(tax):
    r = parse_tags(good_reply(tax, road_layout="curve, narrow lane", notable_objects=[]), tax)
    assert r.tags["road_layout"] == ["curve", "narrow_lane"] and "road_layout: string split into a list" in r.repaired
    assert r.tags["notable_objects"] == [] and "notable_objects" not in r.defaulted  # "none seen" is an answer
    r = parse_tags(good_reply(tax, road_layout=["unknown", "curve", "curve"]), tax)
    assert r.tags["road_layout"] == ["curve"]
    r = parse_tags(good_reply(tax, scene_type=["market", "main_road"]), tax)
    assert r.tags["scene_type"] == "market" and any("several values" in x for x in r.repaired)


@pytest.mark.parametrize(
    "raw, value, repaired",
    [
        (0.7, 0.7, False),
        (1, 1.0, False),
        ("0.7", 0.7, True),
        ("85%", 0.85, True),
        (85, 0.85, True),
        (1.2, 1.0, True),
        (-0.3, 0.0, True),
        ("high", 0.85, True),
        (None, None, False),
        (True, None, True),
        (float("nan"), None, True),
        ("sure", None, True),
    ],
)
def test_coerce_confidence(raw, value, repaired):
    got, note = coerce_confidence(raw)
    assert got == pytest.approx(value) if value is not None else got is None
    assert (note is not None) == repaired


def test_parse_confidence_sources_and_defaults(tax):
    reply = {f.name: (f.values[0] if f.kind == "single" else [f.values[0]]) for f in tax.fields}
    reply["scene_type_confidence"] = 0.9
    reply["confidences"] = {"weather": 0.3, "lighting": 7}  # 7 → 7 %
    r = parse_tags(reply, tax)
    assert r.confidences["scene_type"] == 0.9 and r.confidences["weather"] == 0.3
    assert r.confidences["lighting"] == pytest.approx(0.07)
    assert r.confidences["vegetation"] == tax.default_confidence
    assert any(x.startswith("vegetation: confidence missing") for x in r.repaired)
    assert r.defaulted == []
    wrapped = parse_tags({"tags": {"weather": "rain"}, "confidences": {"weather": 0.6}}, tax)
    assert wrapped.tags["weather"] == "rain" and wrapped.confidences["weather"] == 0.6


def test_parse_expected_fields_limits_default_count(tax):
    r = parse_tags({"lighting": {"value": "low_light", "confidence": 0.9}}, tax, expected_fields=["lighting", "time_of_day"])
    assert r.defaulted == ["time_of_day"]
    assert r.tags["scene_type"] == "unknown" and r.confidences["scene_type"] == 0.0
    with pytest.raises(ValueError, match="not in the taxonomy"):
        parse_tags({}, tax, expected_fields=["colour"])


# ----------------------------------------------------------------------------- heuristic


def test_threshold_confidence_and_bins():
    assert threshold_confidence(0.2, (0.2,), 0.1) == pytest.approx(0.5)
    assert threshold_confidence(0.25, (0.2,), 0.1) == pytest.approx(0.75)
    assert threshold_confidence(0.5, (0.2, 0.45), 0.1) == pytest.approx(0.75)  # nearest edge counts
    assert threshold_confidence(0.9, (0.2,), 0.1) == pytest.approx(1.0)
    assert [bin_index(x, (0.1, 0.5)) for x in (0.0, 0.1, 0.3, 0.5, 0.9)] == [0, 1, 1, 2, 2]


def _texture(h=240, w=320, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)  # smooth, in focus, no 8-px grid


def _clip(scale=1.0, tint=(1.0, 1.0, 1.0), t=8, pan=0, movers=0, blur=0.0, lamps=False):
    base = np.clip(_texture().astype(np.float32) * scale * np.array(tint, np.float32), 0, 255).astype(np.uint8)
    frames = []
    for i in range(t):
        f = np.roll(base, pan * i, axis=1).copy()
        for k in range(movers):  # squares that move independently of the background
            y, x = 20 + 25 * k, 10 + 6 * i + 13 * k
            f[y : y + 16, x : x + 16] = 255 if k % 2 else 0
        if lamps:
            f[10:20, 10:30] = 255
        if blur:
            f = cv2.GaussianBlur(f, (0, 0), blur)
        frames.append(f)
    return np.stack(frames)  # (T, H, W, 3)


def test_heuristic_light_tags():
    b = HeuristicBackend()
    day, night, dusk = b.tag("d", _clip()), b.tag("n", _clip(scale=0.1)), b.tag("k", _clip(scale=0.5))
    warm = b.tag("w", _clip(scale=0.8, tint=(1.3, 0.9, 0.6)))  # mean luma ≈ 0.40 with an orange cast
    lit_night = b.tag("l", _clip(scale=0.1, lamps=True))
    assert day["time_of_day"]["value"] == "day" and day["lighting"]["value"] in ("bright_daylight", "overcast_daylight")
    assert night["time_of_day"]["value"] == "night" and night["lighting"]["value"] == "low_light"
    assert lit_night["lighting"]["value"] == "artificial_light"
    assert dusk["time_of_day"]["value"] == "dusk_or_dawn" and warm["time_of_day"]["value"] == "dusk_or_dawn"
    assert day["time_of_day"]["confidence"] > dusk["time_of_day"]["confidence"] >= 0.5  # dusk is nearer a threshold
    for out in (day, night, dusk, warm):
        assert all(0.0 <= out[k]["confidence"] <= 1.0 for k in HeuristicBackend.measured_fields)


def test_heuristic_density_from_moving_pixels():
    b = HeuristicBackend()
    still, pan, busy = b.tag("s", _clip()), b.tag("p", _clip(pan=3)), b.tag("b", _clip(movers=8))
    assert still["crowd_density"]["value"] == "none" and still["traffic_density"]["value"] == "none"
    assert pan["measurements"]["moving_fraction"] < 0.002  # camera shift is cancelled
    assert pan["crowd_density"]["value"] == "none"
    assert busy["measurements"]["moving_fraction"] > 0.005
    assert busy["crowd_density"]["value"] != "none" and busy["traffic_density"]["value"] != "none"
    assert busy["crowd_density"]["confidence"] <= 0.6  # capped: motion cannot tell people from cars


def test_heuristic_video_quality():
    b = HeuristicBackend()
    sharp = b.tag("s", _clip())
    blurry = b.tag("b", _clip(blur=4.0))
    small = _texture(h=32, w=40)
    blocky_frames = np.stack([cv2.resize(small, (320, 256), interpolation=cv2.INTER_NEAREST)] * 4)  # 8×8 blocks
    blocky = b.tag("k", blocky_frames)
    tiny = b.tag("t", _clip()[:, :96, :128])
    assert sharp["video_quality"]["value"] == "good"
    assert blurry["video_quality"]["value"] == "poor"
    assert measure_blockiness(blocky_frames, 2) > 1.6 > measure_blockiness(_clip(), 2)
    assert blocky["video_quality"]["value"] == "poor"
    assert tiny["video_quality"]["value"] == "poor" and tiny["measurements"]["short_side"] == 96


def test_heuristic_rejects_unknown_threshold_and_bad_frames():
    with pytest.raises(ConfigError, match="night_lumaa"):
        HeuristicBackend(thresholds={"night_lumaa": 0.1})
    with pytest.raises(TagFailure, match="bad frames"):
        HeuristicBackend().tag("x", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(TagFailure, match="dtype float32"):
        HeuristicBackend().tag("x", np.zeros((4, 8, 8, 3), np.float32))


def test_select_frames_spreads_over_clip():
    frames = np.arange(10)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    assert select_frames(frames, 4)[:, 0, 0, 0].tolist() == [0, 3, 6, 9]
    assert select_frames(frames, 1)[:, 0, 0, 0].tolist() == [5]
    assert len(select_frames(frames, 20)) == 10


# ----------------------------------------------------------------------------- stage (heuristic)


def test_stage_heuristic_writes_tags_and_counts_only_measured_fields(tmp_path, tax):
    items = [("day", _clip(t=4)), ("night", _clip(scale=0.1, t=4)), ("broken", np.zeros((4, 8, 8), np.uint8)),
             ("gone", OSError("moov atom not found"))]
    out = tmp_path / "tags.jsonl"
    res = tag_clips(items, build_backend("heuristic"), tax, out, max_default_fraction=0.0, max_bad_fraction=0.5)
    assert res.done == 2 and [s.clip for s in res.skipped] == ["broken", "gone"]
    assert res.skipped[0].reason.startswith("bad frames:")
    assert res.skipped[1].reason == "unreadable: moov atom not found"
    assert res.extra["defaulted_fields"] == 0 and res.extra["default_fraction"] == 0.0
    assert res.extra["fields_answered"] == ["time_of_day", "crowd_density", "traffic_density", "lighting", "video_quality"]
    tags = load_tags(out)
    assert set(tags) == {"day", "night"}
    assert tags["day"]["tags"]["time_of_day"] == "day" and tags["night"]["tags"]["time_of_day"] == "night"
    assert tags["day"]["tags"]["scene_type"] == "unknown" and tags["day"]["backend"] == "heuristic"
    assert "mean_luma" in tags["day"]["measurements"]


def test_stage_fails_on_too_many_skips_but_keeps_file(tmp_path, tax):
    items = [(f"c{i}", np.zeros((2, 4, 4), np.uint8)) for i in range(3)] + [("ok", _clip(t=2))]
    with pytest.raises(BadInputError, match="3/4 clips unusable"):
        tag_clips(items, HeuristicBackend(), tax, tmp_path / "tags.jsonl", max_bad_fraction=0.5)
    assert list(load_tags(tmp_path / "tags.jsonl")) == ["ok"]


class CountingBackend:
    """Answers every field with its first value; counts calls."""

    name = "counting"
    measured_fields = None

    def __init__(self, tax):
        self.tax, self.calls = tax, []

    def tag(self, clip_id, frames):
        self.calls.append(clip_id)
        return json.dumps(good_reply(self.tax))


def test_stage_resumes_from_partial_after_a_crash(tmp_path, tax):
    out = tmp_path / "tags.jsonl"
    frames = _clip(t=2)

    def crashing_items():
        yield "a", frames
        yield "b", lambda: frames  # frames may be a loader
        raise KeyboardInterrupt  # the run dies mid-way

    first = CountingBackend(tax)
    with pytest.raises(KeyboardInterrupt):
        tag_clips(crashing_items(), first, tax, out)
    partial = tmp_path / "tags.jsonl.partial"
    assert not out.exists() and len(partial.read_text().splitlines()) == 2
    with open(partial, "a") as fh:
        fh.write('{"clip_id": "c", "tags"')  # a line torn by the crash

    def loader_never_called():
        raise AssertionError("a reused clip must not be decoded again")

    second = CountingBackend(tax)
    res = tag_clips([("a", loader_never_called), ("b", frames), ("c", frames)], second, tax, out)
    assert second.calls == ["c"] and res.done == 3 and res.extra["reused_clips"] == 2
    assert list(load_tags(out)) == ["a", "b", "c"] and not partial.exists()

    third = CountingBackend(tax)  # resume=False ignores leftovers
    partial.write_text(out.read_text())
    tag_clips([("a", frames)], third, tax, out, resume=False)
    assert third.calls == ["a"]
    with pytest.raises(BadInputError, match="appears twice"):
        tag_clips([("a", frames), ("a", frames)], third, tax, out)


def test_load_tags_errors(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        load_tags(tmp_path / "nope.jsonl")
    p = tmp_path / "dup.jsonl"
    p.write_text('{"clip_id": "a", "tags": {}}\n{"clip_id": "a", "tags": {}}\n')
    with pytest.raises(BadInputError, match="appears twice"):
        load_tags(p)
    p.write_text('{"clip_id": "a"}\n')
    with pytest.raises(BadInputError, match="line 1"):
        load_tags(p)


def test_build_backend_errors(tax):
    with pytest.raises(ConfigError, match="tag.backend must be one of"):
        build_backend("clip", taxonomy=tax)
    with pytest.raises(ConfigError, match="unexpected keyword"):
        build_backend("openai", taxonomy=tax, base_url="http://x/v1", model="m", temprature=0.1)
    backend = build_backend("openai", taxonomy=tax, base_url="http://x/v1", model="m")
    assert backend.prompt == build_prompt(tax)


# ----------------------------------------------------------------------------- OpenAI-compatible server


class FakeServer:
    """An OpenAI chat-completions endpoint on 127.0.0.1 that plays a script of replies."""

    def __init__(self):
        self.script: list[tuple] = []  # (status, body_text, delay_s) per request, in order
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body})
                fake.headers.append(dict(self.headers))
                status, text, delay = fake.script.pop(0) if fake.script else (500, "script empty", 0)
                time.sleep(delay)
                payload = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def chat(self, content: str, delay: float = 0.0) -> None:
        body = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        self.script.append((200, json.dumps(body), delay))

    def fail(self, status: int, text: str = "boom", delay: float = 0.0) -> None:
        self.script.append((status, text, delay))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def _backend(server, tax, **kw):
    args = {"timeout_s": 2.0, "max_retries": 2, "retry_backoff_s": 0.0, "num_frames_for_vlm": 3, "api_key": "sk-test"}
    args.update(kw)
    return OpenAIServerBackend(base_url=server.url, model="qwen-vl", prompt=build_prompt(tax), **args)


def test_openai_good_reply_and_request_shape(server, tax):
    server.chat(json.dumps(good_reply(tax)))
    frames = np.tile(_clip(t=8)[:, :100], (1, 1, 2, 1))  # (8, 100, 640, 3): wide, so resized to image_max_side
    text = _backend(server, tax, image_max_side=300).tag("c0", frames)
    assert parse_tags(text, tax).defaulted == []
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "qwen-vl"
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    content = req["body"]["messages"][0]["content"]
    assert content[0]["type"] == "text" and "scene_type" in content[0]["text"]
    images = [c["image_url"]["url"] for c in content[1:]]
    assert len(images) == 3 and all(u.startswith("data:image/jpeg;base64,") for u in images)
    jpg = cv2.imdecode(np.frombuffer(base64.b64decode(images[0].split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert jpg.shape[:2] == (47, 300)  # 100 × 300/640 rounded


def test_openai_retries_then_succeeds(server, tax):
    server.fail(500)
    server.fail(503)
    server.chat('{"scene_type": "market"}')
    assert "market" in _backend(server, tax).tag("c0", _clip(t=2))
    assert len(server.requests) == 3


def test_openai_failures_are_per_clip_reasons(server, tax):
    server.fail(500)
    server.fail(500)
    with pytest.raises(TagFailure, match=r"^http 500: boom \(after 2 attempts\)"):
        _backend(server, tax, max_retries=1).tag("c0", _clip(t=2))
    server.requests.clear()
    server.fail(400, "bad model")
    with pytest.raises(TagFailure, match="http 400: bad model"):
        _backend(server, tax).tag("c0", _clip(t=2))
    assert len(server.requests) == 1  # a client error is not retried
    server.script.append((200, '{"error": "nope"}', 0))
    with pytest.raises(TagFailure, match="bad response"):
        _backend(server, tax).tag("c0", _clip(t=2))


def test_openai_timeout_is_a_skip_not_a_crash(server, tax):
    server.chat("{}", delay=1.0)
    t0 = time.monotonic()
    with pytest.raises(TagFailure, match="^timeout: no reply within 0.3 s"):
        _backend(server, tax, timeout_s=0.3, max_retries=0).tag("c0", _clip(t=2))
    assert time.monotonic() - t0 < 1.0


def test_openai_connection_refused(tax):
    s = FakeServer()
    s.close()  # nothing listens on that port any more
    with pytest.raises(TagFailure, match="^connection:"):
        _backend(s, tax, max_retries=0).tag("c0", _clip(t=2))


def test_stage_with_openai_counts_repairs_defaults_and_skips(server, tax, tmp_path):
    good = good_reply(tax)
    malformed = "Here you go:\n" + json.dumps(good)[:-1] + ",}  (prose after)"  # trailing comma
    unknown_values = json.dumps(good_reply(tax, weather="purple", lighting={"value": "disco", "confidence": 0.9}))
    missing = json.dumps({k: v for k, v in good.items() if k not in ("vegetation", "road_layout")})
    for reply in (json.dumps(good), malformed, unknown_values, missing):
        server.chat(reply)
    server.fail(500)  # the fifth clip fails twice → skipped
    server.fail(500)
    items = [(f"c{i}", _clip(t=2)) for i in range(5)]
    out = tmp_path / "tags.jsonl"
    res = tag_clips(items, _backend(server, tax, max_retries=1), tax, out, max_default_fraction=0.5)
    assert res.done == 4 and [(s.clip, s.reason.split(":")[0]) for s in res.skipped] == [("c4", "http 500")]
    assert res.extra["repaired_clips"] == 1 and res.extra["defaulted_clips"] == 2
    assert res.extra["defaulted_fields"] == 4
    assert res.extra["default_fraction"] == pytest.approx(4 / (4 * 15), abs=1e-4)
    assert res.extra["defaults_per_field"] == {"weather": 1, "lighting": 1, "vegetation": 1, "road_layout": 1}
    rows = load_tags(out)
    assert rows["c1"]["repaired"] == ["json: trailing commas"] and rows["c1"]["raw"].startswith("Here you go")
    assert rows["c2"]["tags"]["weather"] == "unknown" and rows["c2"]["defaulted"] == ["weather", "lighting"]
    assert rows["c0"]["backend"] == "openai"


def test_stage_fails_when_too_many_fields_default(server, tax, tmp_path):
    server.chat("I cannot help with that.")
    server.chat(json.dumps(good_reply(tax)))
    items = [("a", _clip(t=2)), ("b", _clip(t=2))]
    with pytest.raises(BadInputError, match=r"15/30 answered fields fell back to 'unknown' \(50% > allowed 40%"):
        tag_clips(items, _backend(server, tax), tax, tmp_path / "tags.jsonl", max_default_fraction=0.4)
    assert load_tags(tmp_path / "tags.jsonl")["a"]["json_error"]


# ----------------------------------------------------------------------------- HF VLM (tiny random weights)

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
SMOL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"] + [
    f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)
]


def _tiny_tokenizer(corpus: str, special: list[str], eos: str):
    """A byte-level BPE trained on the prompt, with the model's special tokens (no Hub access)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300 + len(special), special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([corpus], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=special[0])


def _save_tiny_vlm(kind: str, path, prompt: str) -> None:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    text = dict(vocab_size=0, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=4096)
    if kind in ("qwen2_5_vl", "qwen3_vl"):
        tok = _tiny_tokenizer(prompt, QWEN_SPECIAL, "<|im_end|>")
        ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
        # mrope sections split head_dim/2 = 8 rotary frequencies over (time, height, width).
        text.update(vocab_size=len(tok), head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]})
        tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                      vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32)
        if kind == "qwen2_5_vl":
            config = tf.Qwen2_5_VLConfig(text_config=text, vision_config={**vision, "fullatt_block_indexes": [0], "window_size": 56}, **tokens)
            model, patch = tf.Qwen2_5_VLForConditionalGeneration(config), 14
        else:
            config = tf.Qwen3VLConfig(text_config=text, vision_config={**vision, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}, **tokens)
            model, patch = tf.Qwen3VLForConditionalGeneration(config), 16
        side = 4 * patch  # a 4×4 patch grid → 4 image tokens per frame after the 2×2 merge
        image_processor = tf.Qwen2VLImageProcessorPil(patch_size=patch, min_pixels=side * side, max_pixels=side * side)
    else:  # SmolVLM (idefics3 architecture)
        tok = _tiny_tokenizer(prompt, SMOL_SPECIAL, "<end_of_utterance>")
        config = tf.Idefics3Config(
            text_config={**text, "model_type": "llama", "vocab_size": len(tok), "pad_token_id": 0},
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
            scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"),
        )
        model = tf.Idefics3ForConditionalGeneration(config)
        image_processor = tf.Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 32}, do_image_splitting=False)
    tok.save_pretrained(path)
    model.save_pretrained(path)
    image_processor.save_pretrained(path)


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl", "idefics3"])
def test_hf_vlm_tiny_random_model_end_to_end(kind, tax, tmp_path):
    model_dir = tmp_path / kind
    _save_tiny_vlm(kind, model_dir, build_prompt(tax))
    backend = build_backend(
        "hf", taxonomy=tax, model_id_or_path=str(model_dir), max_new_tokens=6, num_frames_for_vlm=3,
        device="cpu", dtype="float32", image_max_pixels=64 * 64, local_files_only=True,
    )
    assert backend.model_type == kind
    rng = np.random.default_rng(0)
    items = [(f"c{i}", rng.integers(0, 256, (8, 64, 80, 3), dtype=np.uint8)) for i in range(2)]
    out = tmp_path / "tags.jsonl"
    # Random weights produce garbage: the parser defaults every field, and the run says so.
    with pytest.raises(BadInputError, match="fell back to 'unknown'"):
        tag_clips(items, backend, tax, out, max_default_fraction=0.5)
    assert 1 <= backend.last_num_generated <= 6
    res = tag_clips(items, backend, tax, out, max_default_fraction=1.0)
    assert res.done == 2 and res.extra["defaulted_fields"] == 2 * len(tax.fields)
    assert res.extra["default_fraction"] == 1.0 and res.extra["defaulted_clips"] == 2
    rows = load_tags(out)
    assert rows["c0"]["backend"] == "hf" and isinstance(rows["c0"]["raw"], str)
    assert all(v in ("unknown", ["unknown"]) for v in rows["c1"]["tags"].values())


def test_hf_vlm_load_errors(tmp_path, tax):
    from vjepa_adapt.tagging.hf_vlm import HFVLMBackend

    with pytest.raises(WeightsError, match="cannot load VLM config"):
        HFVLMBackend(str(tmp_path / "missing"), prompt="p", local_files_only=True)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="model type 'bert'"):
        HFVLMBackend(str(tmp_path / "bert"), prompt="p", local_files_only=True)


@pytest.mark.gpu
def test_hf_vlm_tiny_on_cuda_bf16(tax, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _save_tiny_vlm("qwen2_5_vl", tmp_path / "m", build_prompt(tax))
    backend = build_backend("hf", taxonomy=tax, model_id_or_path=str(tmp_path / "m"), max_new_tokens=4, device="cuda",
                            dtype="auto", image_max_pixels=56 * 56, local_files_only=True)
    assert backend.dtype == torch.bfloat16
    assert isinstance(backend.tag("c", np.zeros((4, 64, 64, 3), np.uint8)), str) and backend.last_num_generated >= 1
