"""`template:` -> the chat format rows are tokenized with.

A LLaMA-Factory template name gives that template, token for token (`lf_template/`), and fixes the
tokenizer's eos, pad and stop words as LLaMA-Factory does. `template` omitted keeps the model's
own Jinja chat template (ChatML for a tokenizer without one). A name LLaMA-Factory registers but
this package does not implement is refused by name; a misspelt one stops with the closest names.
"""

from __future__ import annotations

import difflib

from ..parallel.reduce import IGNORE_INDEX
from .chat_format import ChatFormat, EncodedTurn, JinjaFormat
from .errors import DataError
from .lf_template import TEMPLATES
from .lf_template.chat import LfChatFormat
from .template_names import LLAMAFACTORY_TEMPLATES

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

__all__ = ["IGNORE_INDEX", "ChatFormat", "EncodedTurn", "check_template_name", "chat_format", "pretrain_eos"]


def check_template_name(template: str | None) -> None:
    """A `template` must be one implemented here; a LLaMA-Factory name that is not is refused by
    name, anything else stops with the closest names."""
    if template is None or template in TEMPLATES:
        return
    if template in LLAMAFACTORY_TEMPLATES:
        raise DataError(
            f"template: {template!r} is a LLaMA-Factory template Ulysses Pro does not implement yet; "
            f"implemented: {', '.join(sorted(TEMPLATES))}. Omit `template` to use the tokenizer's own chat template"
        )
    close = difflib.get_close_matches(template, sorted(LLAMAFACTORY_TEMPLATES | set(TEMPLATES)), n=3)
    hint = f"did you mean {', '.join(repr(name) for name in close)}?" if close else "see LLaMA-Factory's list"
    raise DataError(f"template: {template!r} is not a LLaMA-Factory template name; {hint}")


def chat_format(tokenizer, data_args) -> ChatFormat:
    """The run's chat format (`data_args`: anything with `template` and LLaMA-Factory's template
    keys). A named template fixes the tokenizer in place, so call this once, before encoding."""
    name = getattr(data_args, "template", None)
    check_template_name(name)
    if name is None:
        return JinjaFormat(getattr(tokenizer, "chat_template", None) or CHATML_TEMPLATE)
    template = TEMPLATES[name].configured(data_args)
    template.fix_tokenizer(tokenizer)
    return LfChatFormat(template)


def pretrain_eos(tokenizer, template: str | None) -> str | None:
    """The text appended to each pretraining document: the eos, except for llama3, where
    LLaMA-Factory appends `<|end_of_text|>` (its eos is the turn end `<|eot_id|>`)."""
    return "<|end_of_text|>" if template == "llama3" else tokenizer.eos_token
