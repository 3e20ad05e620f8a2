"""`ulysses-pro chat CONFIG.yaml [key=value ...] [--prompt "..."]`: talk to a model in the terminal.

The prompt is written with the run's template (the one training used) and decoded with
LLaMA-Factory's generating keys (`do_sample`, `temperature`, `top_p`, `top_k`, `max_new_tokens`,
...). The answer streams as it is generated. `--prompt` answers once and exits; otherwise each line
read is a user turn, `clear` forgets the conversation and `exit` (or end of input) leaves. `--image PATH` / `--video PATH` (repeatable) give a
vision-language model files for the first turn: `<image>` / `<video>` in the text place them, else
they go in front, as LLaMA-Factory does.
"""

from __future__ import annotations

import argparse
import sys

import torch
from transformers import TextStreamer

from ..config import ConfigError, load_config
from ..data.multimodal.rows import vision_settings
from ..serve.engine import load_for_generation
from ..serve.vision_prompt import VisionTurns


class Chat:
    """A loaded model, its tokenizer and template, and the conversation so far."""

    def __init__(self, config):
        if not config.model.model_name_or_path:
            raise ConfigError("chat needs model_name_or_path")
        self.model, self.tokenizer, self.template = load_for_generation(config)
        self.generating = config.generating
        self.system = config.data.default_system
        self.history: list[dict] = []
        self.vision = vision_turns(config, self.model, self.tokenizer)

    def reply(self, text: str, out=None, images: list[str] = (), videos: list[str] = ()) -> str:
        """Answer one user turn (with image / video files for a vision-language model), streaming it
        to `out`; the turn and the answer join the history."""
        if images or videos:
            if self.vision is None:
                raise ConfigError("images and videos need a vision-language model and a vision template (qwen2_vl)")
            text = self.vision.expand(text, list(images), list(videos))
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            *self.history,
            {"role": "user", "content": text},
        ]
        ids = torch.tensor([self.template.prompt_ids(self.tokenizer, messages)], device=self.model.device)
        media = self.vision.generate_inputs(ids) if self.vision is not None else {}
        streamer = _Printer(
            self.tokenizer, out or sys.stdout, skip_special_tokens=self.generating.skip_special_tokens
        )
        with torch.no_grad():
            output = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                streamer=streamer,
                eos_token_id=self.template.stop_token_ids(self.tokenizer),
                pad_token_id=self.tokenizer.pad_token_id,
                **media,
                **self.generating.generate_kwargs(),
            )
        answer = self.tokenizer.decode(
            output[0, ids.shape[1] :], skip_special_tokens=self.generating.skip_special_tokens
        )
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return answer


def vision_turns(config, model, tokenizer) -> VisionTurns | None:
    """For a vision-language model with a vision template: how turns take images and videos."""
    settings = vision_settings(config.data, tokenizer)
    if settings is None or getattr(model.config, "vision_config", None) is None:
        return None
    return VisionTurns(settings, model.config.image_token_id, model.config.video_token_id)


class _Printer(TextStreamer):
    """Writes the answer to `out` word by word as it is generated."""

    def __init__(self, tokenizer, out, skip_special_tokens: bool):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=skip_special_tokens)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.out.write(text + ("\n" if stream_end else ""))
        self.out.flush()


def run(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ulysses-pro chat", description="Chat with a model in the terminal."
    )
    parser.add_argument("--prompt", help="answer this one prompt and exit")
    parser.add_argument("--image", action="append", default=[], help="an image for the first turn (repeatable)")
    parser.add_argument("--video", action="append", default=[], help="a video for the first turn (repeatable)")
    options, config_arguments = parser.parse_known_args(arguments)
    chat = Chat(load_config(None, config_arguments))
    media = {"images": options.image, "videos": options.video}
    if options.prompt is not None:
        chat.reply(options.prompt, **media)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a message; `clear` forgets the conversation, `exit` leaves.")
    while True:
        try:
            text = input("User: " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        text = text.strip()
        if text == "exit":
            return 0
        if text == "clear":
            chat.history = []
            if chat.vision is not None:
                chat.vision.clear()
            print("(conversation cleared)")
            continue
        if text:
            print("Assistant: ", end="", flush=True)
            chat.reply(text, **media)
            media = {"images": [], "videos": []}  # the files belong to the first turn
