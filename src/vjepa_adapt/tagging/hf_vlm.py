"""Tagging with a local Hugging Face vision-language model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM).

The combined ``AutoProcessor`` of these models pulls in a video processor that needs torchvision,
which this toolkit does not depend on. So we call the pieces ourselves:

- Qwen family: the PIL/numpy image processor (``Qwen2VLImageProcessorPil``, also used by Qwen3-VL
  with its own patch size from the checkpoint's preprocessor config) and the tokenizer. The chat
  text is written by hand in the Qwen chat format, each frame as
  ``<|vision_start|>`` + ``<|image_pad|>`` × (grid_t·grid_h·grid_w / merge_size²) + ``<|vision_end|>``,
  which is exactly what the official processor expands an image into.
- SmolVLM (``idefics3`` / ``smolvlm`` model types): ``Idefics3Processor`` built from the PIL image
  processor and the tokenizer (it has no video processor), with the SmolVLM chat format.

A few frames spread over the clip are sent as separate images, greedy decoding, and only the
newly generated tokens are decoded. Weights load with ``trust_remote_code`` off, always.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vjepa_adapt.errors import ConfigError, WeightsError
from vjepa_adapt.progress import get_logger
from vjepa_adapt.tagging.frames import check_frames, select_frames

QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
SMOLVLM_TYPES = ("idefics3", "smolvlm")
DTYPES = ("auto", "float32", "bfloat16", "float16")

log = get_logger("tagging")


def resolve_device(device: Any) -> str:
    import torch

    device = str(device)  # a torch.device is fine too
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"tag.dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype == "auto":
        # bf16 halves memory on GPU; CPU bf16 matmuls are slow on most machines, so stay fp32 there.
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def build_qwen_chat(prompt: str, image_tokens: list[int], system: str | None = "You are a helpful assistant.") -> str:
    """Qwen chat text with one vision block per frame; ``image_tokens[i]`` pad tokens for frame i."""
    parts = []
    if system:
        parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    parts.append("<|im_start|>user\n")
    for i, n in enumerate(image_tokens):
        parts.append(f"Frame {i + 1}: <|vision_start|>{'<|image_pad|>' * n}<|vision_end|>\n")
    parts.append(f"{prompt}<|im_end|>\n<|im_start|>assistant\n")
    return "".join(parts)


def build_smolvlm_chat(prompt: str, num_images: int) -> str:
    """SmolVLM chat text; the processor expands each ``<image>`` into its image token block."""
    return f"<|im_start|>User:{'<image>' * num_images}{prompt}<end_of_utterance>\nAssistant:"


class HFVLMBackend:
    """A transformers VLM run locally; returns the model's raw text for the parser."""

    name = "hf"
    measured_fields = None

    def __init__(
        self,
        model_id_or_path: str,
        prompt: str | None = None,
        max_new_tokens: int = 512,
        num_frames_for_vlm: int = 4,
        device: str = "auto",
        dtype: str = "auto",
        image_max_pixels: int = 448 * 448,
        local_files_only: bool = False,
    ) -> None:
        if max_new_tokens < 1:
            raise ConfigError(f"tag.max_new_tokens must be >= 1, got {max_new_tokens}")
        if num_frames_for_vlm < 1:
            raise ConfigError(f"tag.num_frames_for_vlm must be >= 1, got {num_frames_for_vlm}")
        if prompt is None:
            from vjepa_adapt.tagging.prompt import build_prompt
            from vjepa_adapt.tagging.taxonomy import load_taxonomy

            prompt = build_prompt(load_taxonomy())
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.num_frames = num_frames_for_vlm
        self.image_max_pixels = image_max_pixels
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.source = str(model_id_or_path)
        self.last_num_generated = 0  # tokens generated for the last clip (for logs and tests)
        self._load(str(model_id_or_path), local_files_only)

    # ------------------------------------------------------------------ loading

    def _load(self, source: str, local_files_only: bool) -> None:
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError) as err:
            raise WeightsError(f"tag: cannot load VLM config from {source!r}: {err}") from None
        self.model_type = config.model_type
        if self.model_type not in QWEN_TYPES + SMOLVLM_TYPES:
            raise ConfigError(
                f"tag: model type {self.model_type!r} ({source}) is not supported; "
                f"supported: {', '.join(QWEN_TYPES + SMOLVLM_TYPES)}"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
            self.model = AutoModelForImageTextToText.from_pretrained(
                source, dtype=self.dtype, local_files_only=local_files_only
            )
        except OSError as err:
            raise WeightsError(f"tag: cannot load VLM weights/tokenizer from {source!r}: {err}") from None
        self.model.to(self.device).eval()
        if self.model_type in QWEN_TYPES:
            self._load_qwen(source, config, local_files_only)
        else:
            self._load_smolvlm(source, config, local_files_only)
        log.info("tag: loaded %s (%s) on %s/%s", source, self.model_type, self.device, self.dtype)

    def _load_qwen(self, source: str, config: Any, local_files_only: bool) -> None:
        from transformers import Qwen2VLImageProcessorPil

        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(source, local_files_only=local_files_only)
        pad_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        expected = getattr(config, "image_token_id", None)
        if pad_id is None or pad_id == self.tokenizer.unk_token_id or (expected is not None and pad_id != expected):
            raise WeightsError(
                f"tag: tokenizer of {source!r} maps <|image_pad|> to {pad_id}, but the model expects "
                f"image_token_id={expected}; tokenizer and weights do not match"
            )
        self.image_pad_id = pad_id

    def _load_smolvlm(self, source: str, config: Any, local_files_only: bool) -> None:
        from transformers import (
            Idefics3ImageProcessorPil,
            Idefics3Processor,
            SmolVLMImageProcessorPil,
        )

        ip_cls = SmolVLMImageProcessorPil if self.model_type == "smolvlm" else Idefics3ImageProcessorPil
        image_processor = ip_cls.from_pretrained(source, local_files_only=local_files_only)
        seq_len = _smolvlm_image_seq_len(source, config, local_files_only)
        self.processor = Idefics3Processor(image_processor=image_processor, tokenizer=self.tokenizer, image_seq_len=seq_len)

    # ------------------------------------------------------------------ tagging

    def tag(self, clip_id: str, frames: np.ndarray) -> str:
        frames = select_frames(check_frames(clip_id, frames), self.num_frames)  # (n, H, W, 3)
        if self.model_type in QWEN_TYPES:
            inputs = self._qwen_inputs(list(frames))
        else:
            inputs = self._smolvlm_inputs(list(frames))
        return self._generate(inputs)

    def _qwen_inputs(self, images: list[np.ndarray]) -> dict:
        ip = self.image_processor
        # Qwen sizes are pixel budgets: shortest_edge = min pixels, longest_edge = max pixels.
        min_pixels = min(int(getattr(ip.size, "shortest_edge", None) or 56 * 56), self.image_max_pixels)
        vis = ip(
            images=images,
            size={"shortest_edge": min_pixels, "longest_edge": self.image_max_pixels},
            input_data_format="channels_last",
            return_tensors="pt",
        )
        grid = vis["image_grid_thw"]  # (n_images, 3): t, h, w in patches
        merge = int(ip.merge_size) ** 2
        counts = [int(g.prod()) // merge for g in grid]
        text = build_qwen_chat(self.prompt, counts)
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        n_pad = int((enc["input_ids"] == self.image_pad_id).sum())
        if n_pad != sum(counts):
            raise WeightsError(
                f"tag: the tokenizer split the image placeholder ({n_pad} image tokens for {sum(counts)} "
                "image patches); is <|image_pad|> a special token of this tokenizer?"
            )
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pixel_values": vis["pixel_values"],
            "image_grid_thw": grid,
        }

    def _smolvlm_inputs(self, images: list[np.ndarray]) -> dict:
        from PIL import Image

        text = build_smolvlm_chat(self.prompt, len(images))
        pil = [Image.fromarray(im) for im in images]
        out = self.processor(text=[text], images=[pil], return_tensors="pt")
        return dict(out)

    def _generate(self, inputs: dict) -> str:
        import torch

        moved = {}
        for k, v in inputs.items():
            if torch.is_tensor(v):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(self.dtype)
            moved[k] = v
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(
                **moved, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id
            )  # (1, prompt + new)
        new_tokens = out[0, moved["input_ids"].shape[1] :]
        self.last_num_generated = int(new_tokens.numel())
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)


def _smolvlm_image_seq_len(source: str, config: Any, local_files_only: bool) -> int:
    """Tokens per image: from the checkpoint's processor config when present, else from the
    vision config — ((image_size / patch_size)² / scale_factor²), as the processor docs define it."""
    from transformers.utils import cached_file

    path = cached_file(
        source, "processor_config.json", local_files_only=local_files_only,
        _raise_exceptions_for_missing_entries=False,
    )
    if path is not None:
        value = json.loads(Path(path).read_text(encoding="utf-8")).get("image_seq_len")
        if isinstance(value, int):
            return value
    vc = config.vision_config
    return int((vc.image_size // vc.patch_size) ** 2 / (config.scale_factor**2))
