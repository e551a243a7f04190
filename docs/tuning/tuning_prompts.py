"""Prompt sources for the tuning study (docs/tuning.md): `--prompts tuning_prompts:hard3` with PYTHONPATH=docs/tuning."""
from diffrl.shapes.world import all_prompts, prompt_set


def _pick(texts: list[str]) -> list[tuple[str, dict]]:
    table = {spec.text: spec for spec in all_prompts("unseen")}
    return [(text, table[text].to_metadata()) for text in texts]


def hard3() -> list[tuple[str, dict]]:
    """Three color_binding_unseen-train prompts the base model mostly fails (success 0.5, 0.125, 0.125)."""
    return _pick(["a red circle and a purple triangle", "an orange triangle and a red square",
                  "a blue circle and a purple square"])


def orange_triangle_train() -> list[tuple[str, dict]]:
    """The 10 color_binding_unseen-train prompts that name an orange triangle (section 19: the combination the demo
    does not learn)."""
    return [(spec.text, spec.to_metadata()) for spec in prompt_set("color_binding", "unseen-train")
            if "orange triangle" in spec.text]
