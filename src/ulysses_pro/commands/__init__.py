"""Commands besides training: `preview` (what the model will see), `export` (merge LoRA), `chat`."""
