"""`ulysses-pro webui`: a Gradio board for training runs (form -> the CLI's YAML, runs as subprocesses,
live curves from trainer_log.jsonl, chat and export). Only app.py imports Gradio."""
