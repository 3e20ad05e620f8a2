"""`ulysses-pro chat CONFIG.yaml [key=value ...] [--prompt "..."]`: talk to a model in the terminal.

The prompt is written with the run's template (the one training used) and decoded with
LLaMA-Factory's generating keys (`do_sample`, `temperature`, `top_p`, `top_k`, `max_new_tokens`,
...). The answer streams as it is generated. `--prompt` answers once and exits; otherwise each line
read is a user turn, `clear` forgets the conversation and `exit` (or end of input) leaves.
"""

from __future__ import annotations

import argparse
import sys

import torch
from transformers import TextStreamer

from ..config import ConfigError, load_config
from ..serve.engine import load_for_generation


class Chat:
    """A loaded model, its tokenizer and template, and the conversation so far."""

    def __init__(self, config):
        if not config.model.model_name_or_path:
            raise ConfigError("chat needs model_name_or_path")
        self.model, self.tokenizer, self.template = load_for_generation(config)
        self.generating = config.generating
        self.system = config.data.default_system
        self.history: list[dict] = []

    def reply(self, text: str, out=None) -> str:
        """Answer one user turn, streaming it to `out`; the turn and the answer join the history."""
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            *self.history,
            {"role": "user", "content": text},
        ]
        ids = torch.tensor([self.template.prompt_ids(self.tokenizer, messages)], device=self.model.device)
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
                **self.generating.generate_kwargs(),
            )
        answer = self.tokenizer.decode(
            output[0, ids.shape[1] :], skip_special_tokens=self.generating.skip_special_tokens
        )
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return answer


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
    options, config_arguments = parser.parse_known_args(arguments)
    chat = Chat(load_config(None, config_arguments))
    if options.prompt is not None:
        chat.reply(options.prompt)
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
            print("(conversation cleared)")
            continue
        if text:
            print("Assistant: ", end="", flush=True)
            chat.reply(text)
