"""A LLaMA-Factory template as a Jinja chat template, for exported tokenizers.

Written into `tokenizer_config.json` by `ulysses-pro export` when the tokenizer has no chat template
of its own, so inference servers format prompts as training did. It covers system, user and
assistant turns (tools and thought blocks are a training-side format).
"""

from __future__ import annotations

from .template import BOS, EOS, PLACEHOLDER, LfTemplate, Slot, Token


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _expression(slots: tuple[Slot, ...], tokenizer, variable: str) -> str:
    """The slots as one Jinja expression, `variable` where the content goes."""
    parts: list[str] = []
    for slot in slots:
        if isinstance(slot, str):
            pieces = slot.split(PLACEHOLDER, 1)
            if pieces[0]:
                parts.append(_quoted(pieces[0]))
            if len(pieces) == 2:
                parts.append(variable)
                if pieces[1]:
                    parts.append(_quoted(pieces[1]))
        elif isinstance(slot, Token):
            parts.append(_quoted(slot.text))
        elif slot is BOS and tokenizer.bos_token:
            parts.append(_quoted(tokenizer.bos_token))
        elif slot is EOS and tokenizer.eos_token:
            parts.append(_quoted(tokenizer.eos_token))
    return " + ".join(parts) or "''"


def jinja_template(template: LfTemplate, tokenizer) -> str:
    out = []
    prefix = _expression(template.prefix, tokenizer, "''")
    if template.prefix:
        out.append("{{ " + prefix + " }}")
    if template.default_system:
        out.append("{% set system_message = " + _quoted(template.default_system) + " %}")
    out.append(
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    )
    system = _expression(template.system, tokenizer, "system_message")
    if not template.system_in_first_user:
        out.append("{% if system_message is defined %}{{ " + system + " }}{% endif %}")
    out.append("{% for message in loop_messages %}{% set content = message['content'] %}")
    if template.system_in_first_user:
        out.append(
            "{% if loop.index0 == 0 and system_message is defined %}"
            "{% set content = " + system + " + message['content'] %}{% endif %}"
        )
    out.append(
        "{% if message['role'] == 'user' %}{{ " + _expression(template.user, tokenizer, "content") + " }}"
        "{% elif message['role'] == 'assistant' %}{{ "
        + _expression(template.assistant, tokenizer, "content")
        + " }}"
        "{% endif %}{% endfor %}"
    )
    return "".join(out)
