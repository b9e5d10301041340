"""Optional second generation mode, in the spirit of Constitutional AI: a model drafts a reply
to a harmful request, critiques its draft against a sampled law, and revises it.

The model is reached through a plain ``reply(messages) -> str`` callable (``messages`` as
``[{"role", "content"}]``), so any chat model fits; :func:`hf_reply_fn` builds one for a Hugging
Face causal LM and a tokenizer carrying the chat tokens. Each success becomes a
``critique_revision`` record: the request (its law vector, no LM loss), the model's draft
(low-ish targets on the sampled law, no LM loss), the model's critique (system part, 1.0) and its
revision (1.0, LM loss). Requests come from the same banks, paraphrase slots and family split as
the template generator; examples where the model wrote nothing are skipped and counted.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from kala_engine.constitution import NUM_LAWS, Constitution, load_constitution
from kala_engine.data import chat_format as chat
from kala_engine.data.banks import Banks, load_banks
from kala_engine.data.generate import DRAFT_TARGET, ONES, _Renderer, family_splits, part
from kala_engine.data.schema import validate_record

Reply = Callable[[list[dict[str, str]]], str]

CRITIQUE_REQUEST = (
    "Critique your answer above against {title}: {text} Point out, in plain words, every way the answer "
    "conflicts with that law."
)
REVISION_REQUEST = (
    "Now rewrite your first answer so that it fully respects {title}: decline what the law forbids, say why "
    "in plain words, and offer a safe alternative."
)


def hf_reply_fn(model, tokenizer, max_new_tokens: int = 96, temperature: float = 0.0, seed: int = 0) -> Reply:
    """A ``reply(messages)`` callable for a Hugging Face causal LM (greedy unless temperature > 0).

    The conversation is rendered with :func:`kala_engine.data.chat_format.format_conversation`; the reply
    stops at ``<|end|>`` or end of text.
    """
    import torch

    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in (chat.END, chat.EOS)]
    device = next(model.parameters()).device

    def reply(messages: list[dict[str, str]]) -> str:
        text = chat.format_conversation(messages, add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=device)
        kwargs: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            torch.manual_seed(seed)
            kwargs["temperature"] = temperature
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                eos_token_id=end_ids,
                pad_token_id=tokenizer.pad_token_id,
                **kwargs,
            )
        new = out[0, ids.shape[1]:].tolist()
        for i, t in enumerate(new):
            if t in end_ids:
                new = new[:i]
                break
        return tokenizer.decode(new, skip_special_tokens=True).strip()

    return reply


def generate_cai_dataset(
    reply: Reply,
    count: int = 100,
    seed: int = 0,
    banks: Banks | None = None,
    constitution: Constitution | None = None,
) -> tuple[list[dict[str, Any]], Counter]:
    """Draft -> critique -> revision with ``reply`` for ``count`` harmful requests.

    Returns the valid records and a Counter of skipped examples by reason. The law for the
    critique is sampled among the laws the request violates.
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    banks = banks or load_banks()
    c = constitution or load_constitution()
    rng = random.Random(seed)
    r = _Renderer(banks, c, rng)
    held_out = family_splits(banks)
    skipped: Counter = Counter()
    records: list[dict[str, Any]] = []
    for i in range(count):
        topic = r.pick(banks.topics_for(rng.randrange(NUM_LAWS)))
        values = r.slots()
        request, _ = r.request(topic, values, pressure=False)
        labels = r.request_labels(topic, False)
        law = c[rng.choice([k for k in range(NUM_LAWS) if labels[k] < 1.0])]
        convo = [{"role": "user", "content": request}]
        draft = reply(convo)
        convo += [{"role": "assistant", "content": draft},
                  {"role": "user", "content": CRITIQUE_REQUEST.format(title=law.title, text=law.text)}]
        critique = reply(convo) if draft.strip() else ""
        convo += [{"role": "assistant", "content": critique},
                  {"role": "user", "content": REVISION_REQUEST.format(title=law.title)}]
        revision = reply(convo) if critique.strip() else ""
        if not (draft.strip() and critique.strip() and revision.strip()):
            skipped["the model wrote an empty draft, critique or revision"] += 1
            continue
        draft_labels = list(ONES)
        draft_labels[law.index] = DRAFT_TARGET
        parts = [
            part("user", request, labels, lm=False),
            part("assistant", draft, draft_labels, lm=False),
            part("system", f"Critique against {law.title}: {critique}", ONES, lm=True),
            part("assistant", revision, ONES, lm=True),
        ]
        rec = {
            "id": f"cai-s{seed}-{i:06d}",
            "kind": "critique_revision",
            "family": f"cai.{topic.id}",
            "split": held_out.get(topic.id, "train"),
            "primary_law": topic.law,
            "labels": [min(p["labels"][k] for p in parts) for k in range(NUM_LAWS)],
            "parts": parts,
        }
        problems = validate_record(rec)
        if problems:
            skipped[f"invalid record ({problems[0]})"] += 1
            continue
        records.append(rec)
    return records, skipped


def cai_from_model_dir(model_dir: str, count: int, seed: int, max_new_tokens: int = 96) -> tuple[list[dict], Counter]:
    """Load a saved causal LM (KALA or any Hugging Face model) and its tokenizer from one folder."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from kala_engine.data.tokenizer import load_tokenizer

    with contextlib.suppress(ImportError):  # registers the KALA auto classes when the model code is present
        import kala_engine.model.modeling_kala  # noqa: F401
    from kala_engine.model.loading import (  # trust_remote_code=False, local files only
        SAFE_KWARGS,
        check_folder,
    )

    check_folder(model_dir)  # no auto_map, safetensors only
    tokenizer = load_tokenizer(model_dir)
    # fp32: it writes on the CPU, and a Pythia folder is stored in fp16, which transformers keeps
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, dtype=torch.float32, **SAFE_KWARGS)
    model.eval()
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ValueError(f"{model_dir}: the model's vocabulary is smaller than its tokenizer's; "
                         "save the model after model.resize_token_embeddings(len(tokenizer))")
    return generate_cai_dataset(hf_reply_fn(model, tokenizer, max_new_tokens=max_new_tokens), count, seed)
