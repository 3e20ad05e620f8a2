"""The LLaMA-Factory templates Ulysses Pro implements, by name.

The slot texts are LLaMA-Factory's formats (`src/llamafactory/data/template.py`, `register_template`
calls); they are data, and only their exact text gives its tokens.
"""

from __future__ import annotations

from .template import BOS, EOS, LfTemplate, define

_CHATML_USER = ("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",)
_CHATML_ANSWER = ("{{content}}<|im_end|>\n",)
_CHATML_SYSTEM = ("<|im_start|>system\n{{content}}<|im_end|>\n",)
_QWEN_OBSERVATION = (
    "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
)
_GEMMA = dict(
    user=("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
    assistant=("{{content}}<end_of_turn>\n",),
    system=("{{content}}\n\n",),
    observation=("<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
    prefix=(BOS,),
    stop_words=("<end_of_turn>",),
    replace_eos=True,
    system_in_first_user=True,
)


def _qwen(name: str, **rules) -> LfTemplate:
    return define(
        name,
        **{
            "user": _CHATML_USER,
            "assistant": _CHATML_ANSWER,
            "system": _CHATML_SYSTEM,
            "function": _CHATML_ANSWER,
            "function_format": "qwen",
            "observation": _QWEN_OBSERVATION,
            "tool_format": "qwen",
            "stop_words": ("<|im_end|>",),
            "replace_eos": True,
            **rules,
        },
    )


def _chatml_like(name: str, **rules) -> LfTemplate:
    return define(name, user=_CHATML_USER, assistant=_CHATML_ANSWER, system=_CHATML_SYSTEM, **rules)


def _llama3_family(name: str, start: str, end: str, eot: str, eom: str) -> LfTemplate:
    def header(role: str) -> str:
        return f"{start}{role}{end}\n\n"

    return define(
        name,
        user=(f"{header('user')}{{{{content}}}}{eot}{header('assistant')}",),
        assistant=(f"{{{{content}}}}{eot}",),
        system=(f"{header('system')}{{{{content}}}}{eot}",),
        function=(f"{{{{content}}}}{eot}",),
        function_format="llama3",
        observation=(f"{header('ipython')}{{{{content}}}}{eot}{header('assistant')}",),
        tool_format="llama3",
        prefix=(BOS,),
        stop_words=(eot, eom),
        replace_eos=True,
    )


TEMPLATES: dict[str, LfTemplate] = {
    template.name: template
    for template in (
        define(
            "default",
            user=("Human: {{content}}", EOS, "\nAssistant:"),
            assistant=("{{content}}", EOS, "\n"),
            system=("System: {{content}}", EOS, "\n"),
        ),
        define("empty", assistant=("{{content}}",)),
        _chatml_like(
            "chatml",
            observation=("<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
            stop_words=("<|im_end|>", "<|im_start|>"),
            replace_eos=True,
        ),
        _chatml_like("yi", stop_words=("<|im_end|>",)),
        _chatml_like("smollm", stop_words=("<|im_end|>",)),
        _chatml_like(
            "smollm2",
            stop_words=("<|im_end|>",),
            default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
        ),
        _qwen("qwen", default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
        _qwen("qwen2_vl", default_system="You are a helpful assistant."),
        _qwen("qwen3", reasoning=True),
        _qwen("qwen3_nothink"),
        # Qwen3-VL's text format is Qwen3's (images and videos are not trained here).
        _qwen("qwen3_vl", reasoning=True),
        _qwen("qwen3_vl_nothink"),
        # Qwen3.5 (and 3.6): Qwen3's chat format with XML tool calls.
        _qwen("qwen3_5", reasoning=True, function_format="qwen3_5", tool_format="qwen3_5"),
        _qwen("qwen3_5_nothink", function_format="qwen3_5", tool_format="qwen3_5"),
        _qwen("qwen3_6", reasoning=True, function_format="qwen3_5", tool_format="qwen3_5"),
        _llama3_family("llama3", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"),
        _llama3_family("llama4", "<|header_start|>", "<|header_end|>", "<|eot|>", "<|eom|>"),
        define(
            "llama2",
            user=(BOS, "[INST] {{content}} [/INST]"),
            system=("<<SYS>>\n{{content}}\n<</SYS>>\n\n",),
            system_in_first_user=True,
        ),
        define(
            "mistral",
            user=("[INST] {{content}}[/INST]",),
            assistant=(" {{content}}", EOS),
            system=("{{content}}\n\n",),
            function=("[TOOL_CALLS] {{content}}", EOS),
            function_format="mistral",
            observation=('[TOOL_RESULTS] {"content": {{content}}}[/TOOL_RESULTS]',),
            tool_format="mistral",
            prefix=(BOS,),
            system_in_first_user=True,
        ),
        define("gemma", **_GEMMA),
        define("gemma3", **_GEMMA),
        define(
            "phi",
            user=("<|user|>\n{{content}}<|end|>\n<|assistant|>\n",),
            assistant=("{{content}}<|end|>\n",),
            system=("<|system|>\n{{content}}<|end|>\n",),
            stop_words=("<|end|>",),
            replace_eos=True,
        ),
        define(
            "phi4",
            user=("<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>",),
            assistant=("{{content}}<|im_end|>",),
            system=("<|im_start|>system<|im_sep|>{{content}}<|im_end|>",),
            stop_words=("<|im_end|>",),
            replace_eos=True,
        ),
        define(
            "deepseek",
            user=("User: {{content}}\n\nAssistant:",),
            system=("{{content}}\n\n",),
            prefix=(BOS,),
        ),
        define("deepseek3", user=("<｜User｜>{{content}}<｜Assistant｜>",), prefix=(BOS,)),
        define("deepseekr1", user=("<｜User｜>{{content}}<｜Assistant｜>",), prefix=(BOS,), reasoning=True),
        define(
            "alpaca",
            user=("### Instruction:\n{{content}}\n\n### Response:\n",),
            assistant=("{{content}}", EOS, "\n\n"),
            default_system=(
                "Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.\n\n"
            ),
        ),
        define(
            "vicuna",
            user=("USER: {{content}} ASSISTANT:",),
            default_system=(
                "A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions."
            ),
        ),
        define(
            "zephyr",
            user=("<|user|>\n{{content}}", EOS, "<|assistant|>\n"),
            system=("<|system|>\n{{content}}", EOS),
            default_system="You are Zephyr, a helpful assistant.",
        ),
        define(
            "glm4",
            user=("<|user|>\n{{content}}<|assistant|>",),
            assistant=("\n{{content}}",),
            system=("<|system|>\n{{content}}",),
            function=("{{content}}",),
            function_format="glm4",
            observation=("<|observation|>\n{{content}}<|assistant|>",),
            tool_format="glm4",
            prefix=("[gMASK]<sop>",),
            stop_words=("<|user|>", "<|observation|>"),
            efficient_eos=True,
        ),
        define(
            "cohere",
            user=(
                "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
            ),
            system=("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>",),
            prefix=(BOS,),
        ),
    )
}

__all__ = ["TEMPLATES"]
