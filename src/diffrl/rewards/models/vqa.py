"""T2I-CompBench's BLIP-VQA attribute-binding score (color, shape, texture categories).

Protocol (Huang et al. 2023, BLIPvqa_eval/BLIP_vqa.py): split the prompt into noun phrases, ask
"<noun phrase>?" for each ("a green bench?"), take the probability of "yes", multiply over phrases.

What is adapted and how:
- Noun phrases: T2I-CompBench uses spaCy `noun_chunks`; spaCy is not a dependency here, so
  `noun_phrases` splits on commas, " and " and " with ". That is identical on the two-object
  template ("a green bench and a red car") that makes up most of the train/val files; for
  free-form captions pass your own splitter (`VqaBinding(noun_phrases=...)`).
- P(yes): T2I-CompBench's `vqa_prob` reads the decoder's first-token distribution after [DEC]
  and returns p(yes) / (p(yes) + p(no)). We score the whole token sequences of "yes" and "no"
  teacher-forced (identical when each is one token, as in BERT's vocabulary) and normalize the
  same way; `normalize=False` gives the raw p(yes).
- transformers' `BlipForQuestionAnswering.forward` returns no logits, so we run its three parts
  (vision model, question encoder, answer decoder) as `generate` does.
- transformers 5.23's BLIP text attention drops the cross-attention mask (`BlipTextAttention`
  passes it as `attention_mask`, which the cross-attending `BlipTextSelfAttention` ignores), so the
  answer decoder would attend to a padded question's [PAD] states and scores would depend on
  what else is in the batch. We therefore batch only questions of equal token length: no padding
  is ever used, and each score equals the unbatched one.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from diffrl.rewards.models._common import (
    batches, check_inputs, env_or, load_pretrained, prepare, resolve_batch_size, resolve_device, to_pil,
)

VQA_ENV = "DIFFRL_VQA_MODEL"
VQA_DEFAULT = "Salesforce/blip-vqa-base"

_SPLIT = re.compile(r"\s*,\s*|\s+and\s+|\s+with\s+", re.IGNORECASE)


def noun_phrases(prompt: str) -> list[str]:
    """Noun phrases of a T2I-CompBench attribute prompt: "a green bench and a red car" -> two phrases."""
    phrases = (p.strip(" .;:!?\"'") for p in _SPLIT.split(prompt.strip()))
    return [p for p in phrases if p]


def questions_for(prompt: str, splitter: Callable[[str], list[str]] = noun_phrases) -> list[str]:
    """T2I-CompBench asks the bare noun phrase as a question: "a green bench?"."""
    return [f"{phrase}?" for phrase in splitter(prompt)]


class VQA(Protocol):
    def yes_probability(self, images: np.ndarray, questions: list[str]) -> np.ndarray:
        """P("yes") for (images[i], questions[i]); images uint8 (M, H, W, 3) -> (M,) in [0, 1]."""


class BlipVQA:
    """BLIP VQA (transformers `BlipForQuestionAnswering`) answering yes/no questions."""

    def __init__(self, model=None, processor=None, model_id: str | None = None, device: str | None = None,
                 batch_size: int | None = None, normalize: bool = True):
        from transformers import BlipForQuestionAnswering, BlipProcessor

        self.model_id = model_id or env_or(VQA_ENV, VQA_DEFAULT)
        self.device = resolve_device(device)
        self.batch_size = resolve_batch_size(batch_size)
        self.normalize = normalize
        if model is None:
            model = load_pretrained(BlipForQuestionAnswering, self.model_id, "BLIP VQA model", VQA_ENV)
        if processor is None:
            processor = load_pretrained(BlipProcessor, self.model_id, "BLIP processor", VQA_ENV)
        self.model, self.processor = prepare(model, self.device), processor
        self.bos_id = self.model.config.text_config.bos_token_id  # [DEC] in BLIP's vocabulary
        tokenizer = processor.tokenizer
        self.yes_ids = tokenizer("yes", add_special_tokens=False)["input_ids"]
        self.no_ids = tokenizer("no", add_special_tokens=False)["input_ids"]

    def _answer_logprob(self, states: torch.Tensor, mask: torch.Tensor, answer: list[int]) -> torch.Tensor:
        """Teacher-forced log p(answer tokens | question states): (B, T, D) -> (B,)."""
        batch = states.shape[0]
        inputs = torch.tensor([[self.bos_id] + answer[:-1]], device=states.device).expand(batch, -1)
        targets = torch.tensor(answer, device=states.device).expand(batch, -1)
        logits = self.model.text_decoder(
            input_ids=inputs, encoder_hidden_states=states, encoder_attention_mask=mask, return_dict=True,
        ).logits  # (B, len(answer), V)
        return logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1).sum(-1)

    def yes_probability(self, images: np.ndarray, questions: list[str]) -> np.ndarray:
        if not questions:
            return np.zeros(0)
        lengths = [len(ids) for ids in self.processor.tokenizer(list(questions))["input_ids"]]
        probs = np.zeros(len(questions), dtype=np.float64)
        for length in sorted(set(lengths)):  # equal-length groups: no padding (see module docstring)
            group = np.flatnonzero(np.asarray(lengths) == length)
            for part in batches(len(group), self.batch_size):
                index = group[part]
                probs[index] = self._yes_probability(images[index], [questions[i] for i in index])
        return probs

    def _yes_probability(self, images: np.ndarray, questions: list[str]) -> np.ndarray:
        with torch.no_grad():
            inputs = self.processor(images=to_pil(images), text=questions, return_tensors="pt",
                                    padding=True).to(self.device)
            image_states = self.model.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state
            image_mask = torch.ones(image_states.shape[:-1], dtype=torch.long, device=self.device)
            states = self.model.text_encoder(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                encoder_hidden_states=image_states, encoder_attention_mask=image_mask, return_dict=True,
            ).last_hidden_state  # (B, T, D)
            log_yes = self._answer_logprob(states, inputs["attention_mask"], self.yes_ids)
            if not self.normalize:
                return log_yes.exp().double().cpu().numpy()
            log_no = self._answer_logprob(states, inputs["attention_mask"], self.no_ids)
            return torch.sigmoid(log_yes - log_no).double().cpu().numpy()  # p_yes / (p_yes + p_no)


class VqaBinding:
    """Product over the prompt's noun phrases of P("yes" | image, "<noun phrase>?"), in [0, 1].

    A prompt with no noun phrase scores 1, as in T2I-CompBench (a missing question counts as 1).
    """

    def __init__(self, vqa: VQA | None = None, noun_phrases: Callable[[str], list[str]] = noun_phrases, **blip):
        self.vqa = vqa if vqa is not None else BlipVQA(**blip)
        self.noun_phrases = noun_phrases

    def __call__(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        images = check_inputs(images, prompts)
        owners, questions = [], []
        for i, prompt in enumerate(prompts):
            for question in questions_for(prompt, self.noun_phrases):
                owners.append(i)
                questions.append(question)
        scores = np.ones(len(images), dtype=np.float64)
        if questions:
            probs = np.asarray(self.vqa.yes_probability(images[owners], questions), dtype=np.float64)
            np.multiply.at(scores, owners, probs)
        return scores
