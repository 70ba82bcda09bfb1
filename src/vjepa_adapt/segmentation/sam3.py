"""SAM 3 backend through transformers' ``Sam3VideoModel``, prompted with the agent vocabulary.

Per clip: the sampled frames are preprocessed (:mod:`~vjepa_adapt.segmentation.sam3_io`), a video
inference session is opened on them, one text prompt per vocabulary entry is added (tokenised by
the checkpoint's CLIP tokenizer), the prompts are propagated through the video
(``propagate_in_video_iterator``: detection + SAM 2-style tracking), and every frame's output is
post-processed to object ids, scores, boxes and masks at the frames' own size. The per-frame
objects go through the same tracklet linking as the classical backend; SAM 3's object ids are kept
as each tracklet's ``source_id``.

The session is built directly (``Sam3VideoInferenceSession``) rather than through
``Sam3VideoProcessor.init_video_session``, whose video processor needs torchvision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vjepa_adapt.config import SegmentConfig
from vjepa_adapt.segmentation.instances import Instances
from vjepa_adapt.segmentation.sam3_io import postprocess_video_frame, preprocess_frames

# SPEC Ch 11's agent vocabulary; its one home is the config default (segment.prompts).
AGENT_VOCABULARY: tuple[str, ...] = tuple(SegmentConfig().prompts)
TEXT_LENGTH = 32  # SAM 3's text encoder context (the reference processor pads to 32)

Tokenize = Callable[[str], tuple[Any, Any]]  # text -> (input_ids (1, L), attention_mask (1, L)) torch.long


def hf_tokenizer(model_id_or_path: str) -> Tokenize:
    """The checkpoint's tokenizer (CLIP BPE), padded to :data:`TEXT_LENGTH`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_id_or_path)

    def tokenize(text: str) -> tuple[Any, Any]:
        enc = tok(text, return_tensors="pt", padding="max_length", max_length=TEXT_LENGTH, truncation=True)
        return enc["input_ids"], enc["attention_mask"]

    return tokenize


class Sam3VideoSegmenter:
    """``segment(frames, camera_steps) -> list[Instances]`` with a ``Sam3VideoModel``."""

    name = "sam3"

    def __init__(self, model: Any, tokenize: Tokenize, prompts: Sequence[str] = AGENT_VOCABULARY,
                 device: str = "cpu", score_threshold: float = 0.5, nms_iou: float = 0.5,
                 dtype: Any = None):
        import torch

        if not prompts:
            raise ValueError("SAM 3 needs at least one text prompt")
        self.model = model.eval().to(device)
        self.tokenize = tokenize
        self.prompts = list(prompts)
        self.device = device
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.dtype = dtype or torch.float32

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, device: str = "cpu", dtype: Any = None,
                        **kwargs: Any) -> Sam3VideoSegmenter:
        """Load ``facebook/sam3`` (or a local copy) and its tokenizer."""
        from transformers import Sam3VideoModel

        model = Sam3VideoModel.from_pretrained(model_id_or_path, **({"dtype": dtype} if dtype is not None else {}))
        return cls(model, hf_tokenizer(model_id_or_path), device=device, dtype=dtype, **kwargs)

    def open_session(self, frames: np.ndarray) -> Any:
        """A video inference session on the frames with every prompt added."""
        from transformers.models.sam3_video.modeling_sam3_video import (
            Sam3VideoInferenceSession,
        )

        h, w = frames.shape[1:3]
        pixels = preprocess_frames(frames, int(self.model.config.image_size))  # (T, 3, S, S)
        session = Sam3VideoInferenceSession(video=pixels, video_height=h, video_width=w,
                                            inference_device=self.device, inference_state_device=self.device,
                                            video_storage_device=self.device, dtype=self.dtype)
        for text in self.prompts:
            pid = session.add_prompt(text)
            if pid not in session.prompt_input_ids:
                ids, mask = self.tokenize(text)
                session.prompt_input_ids[pid] = ids.to(self.device)
                session.prompt_attention_masks[pid] = mask.to(self.device)
        return session

    def segment(self, frames: np.ndarray, camera_steps: np.ndarray | None = None) -> list[Instances]:
        frames = np.asarray(frames)
        n, h, w, _ = frames.shape
        session = self.open_session(frames)
        out: list[Instances | None] = [None] * n
        for result in self.model.propagate_in_video_iterator(session):
            prompt_of = {int(o): session.prompts[p] for o, p in session.obj_id_to_prompt_id.items()}
            objs = postprocess_video_frame(result, h, w, prompt_of, hidden_ids=session.hotstart_removed_obj_ids,
                                           score_threshold=self.score_threshold, nms_iou=self.nms_iou)
            out[objs.frame_idx] = Instances(objs.masks, objs.scores, objs.prompts, source_ids=objs.object_ids)
        return [o if o is not None else Instances.empty(h, w) for o in out]
