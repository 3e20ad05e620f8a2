"""What each button of the board does, without Gradio: form values in, text and numbers out.

app.py wires these to components; tests call them directly. Every failure the user can cause comes
back as the one line the CLI would print (`InputError`, `FormError`), never a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chat import ChatSession, chat_config
from .checks import InputError, check_config, preview_text
from .form import FormError, command_line, config_from_form, form_from_config, from_yaml, to_yaml
from .metrics import Progress, curve_points, final_metrics, progress, read_log
from .planning import layout_text, memory_text
from .runs import CONFIG_FILE, FINISHED, RUNNING, Run, RunRegistry

LOG_TAIL_CHARS = 20_000
USER_ERRORS = (InputError, FormError, RuntimeError, KeyError, OSError)


def dataset_names(dataset_dir: str | None) -> list[str]:
    """The names a dataset folder's dataset_info.json defines ([] when it has none)."""
    try:
        info = json.loads((Path(dataset_dir or "data") / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return sorted(info) if isinstance(info, dict) else []


def readable_log(text: str) -> str:
    """A log as a terminal would leave it: of each line's carriage-return rewrites (tqdm's bars),
    only the last."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def _nproc(values: dict) -> int:
    try:
        return max(1, int(float(values.get("nproc") or 1)))
    except (TypeError, ValueError):
        raise FormError(f"processes: {values.get('nproc')!r} is not a whole number") from None


@dataclass
class RunView:
    """Everything the board shows about one run."""

    name: str = ""
    status: str = ""
    progress: Progress = field(default_factory=Progress)
    points: list[tuple[int, float, str]] = field(default_factory=list)
    log: str = ""
    final: dict = field(default_factory=dict)
    checkpoint: str | None = None

    @property
    def fraction(self) -> float:
        if self.status == FINISHED:
            return 1.0
        return self.progress.percentage / 100 if self.progress.total_steps else 0.0

    def curves_line(self) -> str:
        """'loss: 4 points (last 6.9812) · eval_loss: ...' for the plot's caption."""
        counts: dict[str, int] = {}
        for _, _, name in self.points:
            counts[name] = counts.get(name, 0) + 1
        if not counts:
            return "no points yet"
        latest = self.progress.latest
        return " · ".join(f"{name}: {n} points (last {latest.get(name, float('nan')):.4f})" for name, n in counts.items())


class Board:
    """The board's state: the run registry and the chat model."""

    def __init__(self, runs_root: str | Path):
        self.registry = RunRegistry(runs_root)
        self.chat = ChatSession()

    # -- Train tab -------------------------------------------------------------------------

    def preview(self, values: dict) -> tuple[str, str, str, str]:
        """(message, YAML, command, SP layout) for the form, after the CLI's checks."""
        config = config_from_form(values)
        nproc = _nproc(values)
        path = str(Path(config["output_dir"]) / CONFIG_FILE) if config.get("output_dir") else CONFIG_FILE
        run_config = check_config(config, nproc, path)
        return (
            "ok: the config passes the checks `ulysses-pro train` runs first",
            to_yaml(config, nproc, path),
            command_line(path, nproc),
            layout_text(run_config, nproc),
        )

    def plan(self, values: dict, memory: str) -> str:
        """The SP layout and the planner's memory answer for the form's config."""
        config = config_from_form(values)
        nproc = _nproc(values)
        run_config = check_config(config, nproc, CONFIG_FILE)
        return layout_text(run_config, nproc) + "\n\n" + memory_text(run_config, nproc, memory)

    def rows(self, values: dict, count: int = 3) -> str:
        """The first rows, encoded, as `ulysses-pro preview` prints them."""
        config = config_from_form(values)
        run_config = check_config(config, _nproc(values), CONFIG_FILE)
        return preview_text(run_config, int(count or 3))

    def save(self, values: dict, path: str) -> str:
        if not path or not path.strip():
            raise FormError("save: give the file to write (a .yaml path)")
        config = config_from_form(values)
        target = Path(path.strip())
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(to_yaml(config, _nproc(values), str(target)), encoding="utf-8")
        return f"saved {target}"

    def load(self, path: str) -> tuple[dict, str]:
        """Form values from a YAML the CLI reads (its header's NPROC_PER_NODE, when there is one)."""
        if not path or not path.strip():
            raise FormError("load: give the YAML file to read")
        config, nproc = from_yaml(Path(path.strip()).read_text(encoding="utf-8"))
        return form_from_config(config, nproc), f"loaded {path.strip()}"

    def start(self, values: dict) -> tuple[str, str]:
        """Check the config, then start it: (message, the run's output_dir)."""
        config = config_from_form(values)
        nproc = _nproc(values)
        config["output_dir"] = str(Path(config.get("output_dir") or self.registry.new_output_dir()).resolve())
        check_config(config, nproc, str(Path(config["output_dir"]) / CONFIG_FILE))
        run = self.registry.start(config, nproc)
        return f"started {run.name}: {command_line(str(run.config_path), nproc)}", run.output_dir

    def stop(self, output_dir: str | None) -> str:
        if not output_dir:
            raise FormError("stop: select a run")
        run = self.registry.stop(output_dir)
        return f"{run.name}: {run.status}"

    def resume(self, output_dir: str | None) -> str:
        if not output_dir:
            raise FormError("resume: select a run")
        run = self.registry.resume(output_dir)
        return f"{run.name}: resumed (start {run.starts})"

    def runs_table(self) -> list[list[Any]]:
        """One row a run: name, status, step, last loss, folder."""
        rows = []
        for run in self.registry.runs():
            found = progress(read_log(run.output_dir))
            step = f"{found.step}/{found.total_steps}" if found.total_steps else "-"
            loss = found.latest.get("loss")
            rows.append([run.name, run.status, step, "-" if loss is None else f"{loss:.4f}", run.output_dir])
        return rows

    def run_choices(self) -> list[tuple[str, str]]:
        return [(f"{run.name} ({run.status})", run.output_dir) for run in self.registry.runs()]

    def view(self, output_dir: str | None) -> RunView:
        if not output_dir:
            return RunView()
        from .runs import last_checkpoint

        run: Run = self.registry.get(output_dir)
        records = read_log(run.output_dir)
        log = ""
        if run.log_path.is_file():
            with run.log_path.open("rb") as handle:
                handle.seek(max(0, run.log_path.stat().st_size - LOG_TAIL_CHARS))
                log = readable_log(handle.read().decode("utf-8", errors="replace"))
        checkpoint = last_checkpoint(run.output_dir)
        return RunView(
            name=run.name,
            status=run.status,
            progress=progress(records),
            points=curve_points(records),
            log=log,
            final=final_metrics(run.output_dir) if run.status != RUNNING else {},
            checkpoint=checkpoint.name if checkpoint else None,
        )

    # -- Chat and Export tabs --------------------------------------------------------------

    def model_of_run(self, output_dir: str | None) -> tuple[str, str, str]:
        """(model, adapter, template) to chat with or export a run's result: its output folder is
        the adapter of a LoRA run, the model itself otherwise."""
        if not output_dir:
            raise FormError("select a run first")
        config, _ = from_yaml((Path(output_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
        template = config.get("template") or ""
        if config.get("finetuning_type", "lora") == "lora":
            return str(config.get("model_name_or_path", "")), output_dir, template
        return output_dir, "", template

    def load_chat(self, model: str, adapter: str, template: str, max_new_tokens: int) -> str:
        return self.chat.load(chat_config(model, adapter, template, max_new_tokens))

    def export(self, model: str, adapter: str, template: str, export_dir: str, export_size: float) -> str:
        """Merge the adapter (if any) into the model and write a Hugging Face folder (`export`)."""
        from ..commands.export import export_model
        from ..config import ConfigError, load_config
        from ..data.errors import DataError

        config = chat_config(model, adapter, template, 1)
        config.pop("max_new_tokens")
        config.update(export_dir=(export_dir or "").strip(), export_size=float(export_size or 5))
        try:
            out = export_model(load_config(config))
        except (ConfigError, DataError) as err:
            raise InputError(f"{type(err).__name__}: {err}") from None
        return f"exported to {out}"
