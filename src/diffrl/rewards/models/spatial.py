"""T2I-CompBench-style spatial score with an open-vocabulary detector (OWLv2) instead of UniDet.

Scoring follows T2I-CompBench's UniDet_eval/2D_spatial_eval.py (Huang et al. 2023):
- both objects detected: 0.25 * conf_A + 0.25 * conf_B + 0.5 * position(A, relation, B)
- one detected: 0.25 * its confidence; none: 0; then any score below 0.5 becomes 0,
so the score is 0 or in [0.5, 1]: both objects must be found and the relation must (mostly) hold.
position() is T2I-CompBench's `determine_position`, from box centres:
- left/right/top/bottom: 1 when the centre offset is mainly along the asked axis in the asked
  direction and IoU < 0.1; 0.1 / IoU when they overlap more; 0 in the wrong direction.
- near / next to / on side of: 1 when |dx| or |dy| is under 150 px (of 512: we use the fraction
  150/512 of the padded image side), else threshold / max(|dx|, |dy|).
What changed: coordinates are fractions of the (square-padded) image, not pixels; the detector is
OWLv2 queried with the two object phrases (the best box per phrase, if its sigmoid score passes
`threshold`) instead of UniDet's fixed label set (so no "girl -> person" mapping is needed); the
relation is parsed with a regex instead of spaCy, and "on top of", "above", "below", "under",
"beside" are accepted as synonyms (T2I-CompBench's prompts use "on the top of"/"on the bottom of").
"""
from __future__ import annotations

import re
import warnings
from typing import NamedTuple, Protocol

import numpy as np
import torch

from diffrl.errors import DiffrlError
from diffrl.rewards.models._common import (
    batches, check_inputs, env_or, load_pretrained, prepare, resolve_batch_size, resolve_device, to_pil,
)

DETECTOR_ENV = "DIFFRL_DETECTOR_MODEL"
DETECTOR_DEFAULT = "google/owlv2-base-patch16-ensemble"

RELATIONS = {
    "on the left of": "left", "to the left of": "left", "left of": "left",
    "on the right of": "right", "to the right of": "right", "right of": "right",
    "on the top of": "top", "on top of": "top", "above": "top",
    "on the bottom of": "bottom", "below": "bottom", "under": "bottom", "beneath": "bottom",
    "next to": "near", "near": "near", "on side of": "near", "beside": "near",
}
_RELATION = re.compile(
    r"^(?P<a>.+?)\s+(?P<rel>" + "|".join(sorted(map(re.escape, RELATIONS), key=len, reverse=True))
    + r")\s+(?P<b>.+?)[\s.!]*$", re.IGNORECASE)
_ARTICLE = re.compile(r"^(a|an|the)\s+", re.IGNORECASE)

Box = tuple[float, float, float, float]  # (x_min, y_min, x_max, y_max), fractions of the image side


class SpatialPrompt(NamedTuple):
    object_a: str
    relation: str  # canonical: left, right, top, bottom, near
    object_b: str


def parse_spatial(prompt: str) -> SpatialPrompt:
    """"a dog on the left of a cat" -> SpatialPrompt("dog", "left", "cat")."""
    match = _RELATION.match(prompt.strip())
    if not match:
        raise DiffrlError(f"spatial reward: no '<object> <relation> <object>' in prompt {prompt!r} "
                          f"(relations: {', '.join(RELATIONS)})")
    a, b = (_ARTICLE.sub("", match[name].strip()) for name in ("a", "b"))
    return SpatialPrompt(a, RELATIONS[match["rel"].lower()], b)


def _iou(box1: Box, box2: Box) -> float:
    dx = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    dy = max(0.0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    inter = dx * dy
    union = (box1[2] - box1[0]) * (box1[3] - box1[1]) + (box2[2] - box2[0]) * (box2[3] - box2[1]) - inter
    return inter / union if union > 0 else 0.0


def position_score(relation: str, box1: Box, box2: Box, iou_threshold: float = 0.1,
                   distance_threshold: float = 150 / 512) -> float:
    """How well "object 1 <relation> object 2" holds for their boxes, in [0, 1] (image y points down)."""
    dx = (box2[0] + box2[2]) / 2 - (box1[0] + box1[2]) / 2  # > 0: object 2 is right of object 1
    dy = (box2[1] + box2[3]) / 2 - (box1[1] + box1[3]) / 2  # > 0: object 2 is below object 1
    if relation == "near":
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    along, across = {"left": (dx, dy), "right": (-dx, dy), "top": (dy, dx), "bottom": (-dy, dx)}[relation]
    if along <= 0 or abs(along) <= abs(across):
        return 0.0
    iou = _iou(box1, box2)
    return 1.0 if iou < iou_threshold else iou_threshold / iou


class Detection(NamedTuple):
    score: float
    box: Box


class Detector(Protocol):
    def detect(self, images: np.ndarray, queries: list[list[str]]) -> list[list[Detection | None]]:
        """The best box per text query per image, or None below the detector's threshold."""


def spatial_score(parsed: SpatialPrompt, found_a: Detection | None, found_b: Detection | None,
                  gate: float = 0.5) -> float:
    """T2I-CompBench's combination of detection confidences and position, zeroed below `gate`."""
    if found_a and found_b:
        score = 0.25 * found_a.score + 0.25 * found_b.score + 0.5 * position_score(
            parsed.relation, found_a.box, found_b.box)
    elif found_a or found_b:
        score = 0.25 * (found_a or found_b).score
    else:
        score = 0.0
    return score if score >= gate else 0.0


class OwlDetector:
    """OWLv2 (transformers `Owlv2ForObjectDetection`) as a text-queried detector."""

    def __init__(self, model=None, processor=None, model_id: str | None = None, device: str | None = None,
                 batch_size: int | None = None, threshold: float = 0.1):
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        self.model_id = model_id or env_or(DETECTOR_ENV, DETECTOR_DEFAULT)
        self.device = resolve_device(device)
        self.batch_size = resolve_batch_size(batch_size)
        self.threshold = threshold
        if model is None:
            model = load_pretrained(Owlv2ForObjectDetection, self.model_id, "OWLv2 detector", DETECTOR_ENV)
        if processor is None:
            processor = load_pretrained(Owlv2Processor, self.model_id, "OWLv2 processor", DETECTOR_ENV)
        self.model, self.processor = prepare(model, self.device), processor
        self.max_length = self.model.config.text_config.max_position_embeddings
        self._torch_resize = False  # set once the processor's own resize cannot run here

    def _pixels(self, images: np.ndarray) -> torch.Tensor:
        if not self._torch_resize:
            try:
                return self.processor.image_processor(images=to_pil(images), return_tensors="pt")["pixel_values"]
            except ImportError:  # transformers 5 wants torchvision (fast) or scipy (PIL) for OWLv2's resize
                warnings.warn("OWLv2 image processor needs torchvision or scipy; using a torch resize instead "
                              "(antialiased bilinear, not scipy's Gaussian + zoom: boxes may shift slightly)",
                              stacklevel=3)
                self._torch_resize = True
        return owlv2_pixels(images, self.processor.image_processor)

    def detect(self, images: np.ndarray, queries: list[list[str]]) -> list[list[Detection | None]]:
        results = []
        with torch.no_grad():
            for part in batches(len(images), self.batch_size):
                texts = queries[part]
                per_image = max(len(q) for q in texts)
                flat = [q[i] if i < len(q) else " " for q in texts for i in range(per_image)]
                tokens = self.processor.tokenizer(flat, padding="max_length", truncation=True,
                                                  max_length=self.max_length, return_tensors="pt").to(self.device)
                out = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                 pixel_values=self._pixels(images[part]).to(self.device))
                probs = out.logits.float().sigmoid().cpu()  # (B, patches, queries)
                boxes = out.pred_boxes.float().cpu()  # (B, patches, 4): cx, cy, w, h in [0, 1]
                for b, q in enumerate(texts):
                    best, index = probs[b, :, : len(q)].max(dim=0)
                    row = []
                    for score, i in zip(best.tolist(), index.tolist()):
                        cx, cy, w, h = boxes[b, i].tolist()
                        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                        row.append(Detection(score, box) if score >= self.threshold else None)
                    results.append(row)
        return results


def owlv2_pixels(images: np.ndarray, image_processor) -> torch.Tensor:
    """OWLv2 preprocessing in torch: rescale, zero-pad bottom/right to a square, resize, normalize."""
    size = image_processor.size
    height, width = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
    side = max(x.shape[-2:])
    x = torch.nn.functional.pad(x, (0, side - x.shape[-1], 0, side - x.shape[-2]))
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


class SpatialScore:
    """Reward for "<object A> <relation> <object B>" prompts: 0, or in [0.5, 1] (see module docstring)."""

    def __init__(self, detector: Detector | None = None, gate: float = 0.5, **owl):
        self.detector = detector if detector is not None else OwlDetector(**owl)
        self.gate = gate

    def __call__(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        images = check_inputs(images, prompts)
        parsed = [parse_spatial(p) for p in prompts]
        found = self.detector.detect(images, [[p.object_a, p.object_b] for p in parsed])
        return np.asarray([spatial_score(p, a, b, self.gate) for p, (a, b) in zip(parsed, found)], dtype=np.float64)
