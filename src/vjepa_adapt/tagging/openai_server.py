"""Tagging through any OpenAI-compatible chat-completions server (vLLM, llama.cpp, a hosted API).

Frames go as base64 JPEG data URLs in ``image_url`` content parts. Only the standard library is
used (urllib), so no client package is needed. A timeout, a connection error, a 429 or a 5xx is
retried ``max_retries`` times with a short linear backoff; after that, or on any other HTTP error
or a reply that is not a chat completion, the clip fails with a reason (the stage skips it and
counts it) instead of ending the run.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.error
import urllib.request

import cv2
import numpy as np

from vjepa_adapt.errors import ConfigError
from vjepa_adapt.progress import get_logger
from vjepa_adapt.tagging.frames import TagFailure, check_frames, select_frames

log = get_logger("tagging")

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def encode_jpeg_data_url(frame: np.ndarray, quality: int = 85) -> str:
    """An RGB uint8 frame ``(H, W, 3)`` as ``data:image/jpeg;base64,...``."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise TagFailure("encode: JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


class OpenAIServerBackend:
    """Chat completions with images; returns the assistant message text for the parser."""

    name = "openai"
    measured_fields = None

    def __init__(
        self,
        base_url: str,
        model: str,
        prompt: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        retry_backoff_s: float = 1.0,
        max_new_tokens: int = 512,
        num_frames_for_vlm: int = 4,
        image_max_side: int = 448,
        json_mode: bool = False,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"tag.base_url must start with http:// or https://, got {base_url!r}")
        if timeout_s <= 0 or max_retries < 0:
            raise ConfigError(f"tag: timeout_s must be > 0 and max_retries >= 0 (got {timeout_s}, {max_retries})")
        if prompt is None:
            from vjepa_adapt.tagging.prompt import build_prompt
            from vjepa_adapt.tagging.taxonomy import load_taxonomy

            prompt = build_prompt(load_taxonomy())
        # base_url is the API root (".../v1"), as in the OpenAI clients.
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.prompt = prompt
        # Keys belong in the environment, not in configs that get saved into run folders.
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.max_new_tokens = max_new_tokens
        self.num_frames = num_frames_for_vlm
        self.image_max_side = image_max_side
        self.json_mode = json_mode

    def build_request_body(self, frames: np.ndarray) -> dict:
        content: list[dict] = [{"type": "text", "text": self.prompt}]
        for frame in frames:
            h, w = frame.shape[:2]
            scale = self.image_max_side / max(h, w)
            if scale < 1.0:  # fewer bytes and fewer vision tokens; the taxonomy needs no fine detail
                frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            content.append({"type": "image_url", "image_url": {"url": encode_jpeg_data_url(frame)}})
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_new_tokens,
            "temperature": 0.0,
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def tag(self, clip_id: str, frames: np.ndarray) -> str:
        frames = select_frames(check_frames(clip_id, frames), self.num_frames)  # (n, H, W, 3)
        data = json.dumps(self.build_request_body(frames)).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"

        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.retry_backoff_s * attempt)
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                    payload = resp.read()
            except urllib.error.HTTPError as err:
                detail = err.read(300).decode("utf-8", "replace").strip()
                reason = f"http {err.code}: {detail or err.reason}"
                if err.code not in _RETRY_STATUS:
                    raise TagFailure(reason) from None  # a 400/401/404 will not fix itself
            except (TimeoutError, socket.timeout):
                reason = f"timeout: no reply within {self.timeout_s:g} s"
            except urllib.error.URLError as err:
                # urlopen wraps connect-phase timeouts in URLError too.
                if isinstance(err.reason, (TimeoutError, socket.timeout)):
                    reason = f"timeout: no reply within {self.timeout_s:g} s"
                else:
                    reason = f"connection: {err.reason}"
            except (ConnectionError, OSError) as err:  # reset mid-read, etc.
                reason = f"connection: {err}"
            else:
                return _message_text(payload)
            log.debug("tag %s: attempt %d failed (%s)", clip_id, attempt + 1, reason)
        raise TagFailure(f"{reason} (after {self.max_retries + 1} attempts)")


def _message_text(payload: bytes) -> str:
    """The assistant text of a chat-completions reply, or TagFailure if it is not one."""
    try:
        reply = json.loads(payload)
        content = reply["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        raise TagFailure(f"bad response: not a chat completion ({payload[:120]!r})") from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise TagFailure(f"bad response: message content is {type(content).__name__}")
    return content
