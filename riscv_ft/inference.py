"""Answering descriptions with a (fine-tuned) model: batched, greedy by default.

Used after training (sample generations), by the evaluation and by `riscv_ft.generate`.
"""

from __future__ import annotations

from riscv_ft.data.pipeline import prompt_text


def generate_answers(
    model,
    tokenizer,
    descriptions: list[str],
    prompt_format: str,
    max_tokens: int = 64,
    batch_size: int = 32,
    temperature: float = 0.0,
    top_p: float = 0.0,  # 0 turns nucleus sampling off (mlx-lm convention)
) -> list[str]:
    """One answer per description, generated in batches with mlx-lm's batch_generate."""
    from mlx_lm import batch_generate
    from mlx_lm.sample_utils import make_sampler

    if not descriptions:
        return []
    sampler = make_sampler(temp=temperature, top_p=top_p)
    answers: list[str] = []
    model.eval()
    for start in range(0, len(descriptions), batch_size):
        chunk = descriptions[start : start + batch_size]
        # add_special_tokens=False: the chat template already starts with <s>.
        prompts = [
            tokenizer.encode(prompt_text(d, tokenizer, prompt_format), add_special_tokens=prompt_format != "chat")
            for d in chunk
        ]
        response = batch_generate(model, tokenizer, prompts, max_tokens=max_tokens, sampler=sampler)
        answers.extend(text.strip() for text in response.texts)
    return answers
