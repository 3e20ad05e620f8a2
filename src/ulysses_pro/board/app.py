"""The Gradio page: Train (form, checks, runs, live curves and log), Chat and Export tabs.

Layout and wiring only; what a button does is in actions.py. Gradio is imported here, and only
`ulysses-pro webui` imports this module.
"""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from ..data.lf_template.registry import TEMPLATES
from .actions import USER_ERRORS, Board, RunView, dataset_names
from .form import BOARD_FIELDS, ENGINES, FIELDS, NAMES, PRECISIONS, form_defaults

REFRESH_S = 1.0


def _component(field, value):
    """The input component of a form field (elem_id = its config key, for scripts and tests)."""
    common = {"label": field.label, "elem_id": field.key, "info": field.info or None}
    if field.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if field.kind in ("int", "float") and field.default is not None:
        return gr.Number(value=value, precision=0 if field.kind == "int" else None, **common)
    if field.kind == "multi":
        return gr.Dropdown(choices=[], value=value or [], multiselect=True, allow_custom_value=True, **common)
    if field.kind == "choice":
        choices = field.choices or ("", *sorted(TEMPLATES))
        return gr.Dropdown(choices=list(choices), value=value if value is not None else "", **common)
    # Also the numbers that may stay blank (the CLI's default): gr.Number would send 0.
    return gr.Textbox(value="" if value is None else str(value), **common)


def _curve_frame(points):
    import pandas as pd

    return pd.DataFrame(points or [], columns=["step", "value", "curve"])


def _progress_html(view: RunView) -> str:
    found = view.progress
    line = found.describe() if found.total_steps else (view.status or "select a run")
    if view.status:
        line = f"{view.name}: {view.status} · {line}"
    if view.checkpoint:
        line += f" · last checkpoint {view.checkpoint}"
    return (
        f'<progress value="{view.fraction:.4f}" max="1" style="width:100%;height:14px"></progress>'
        f'<div id="progress_line">{html.escape(line)}</div>'
    )


def build_app(runs_root: str | Path) -> gr.Blocks:
    """The board over a registry of runs under `runs_root`."""
    board = Board(runs_root)
    defaults = form_defaults()
    if Path("data/dataset_info.json").is_file():
        defaults["dataset_dir"] = "data"
    inputs: dict = {}
    with gr.Blocks(title="Ulysses Pro board", analytics_enabled=False) as demo:
        gr.Markdown("## Ulysses Pro — training board")
        message = gr.Textbox(label="Message", interactive=False, elem_id="board_message", lines=1)
        with gr.Tab("Train"):
            groups = {"model": "Model and stage", "data": "Data", "train": "Training", "sp": "Sequence parallelism"}
            for group, title in groups.items():
                with gr.Group():
                    gr.Markdown(f"**{title}**")
                    with gr.Row(equal_height=True):
                        for field in (f for f in FIELDS if f.group == group):
                            inputs[field.key] = _component(field, defaults[field.key])
                        if group == "train":
                            inputs["precision"] = gr.Dropdown(list(PRECISIONS), value=defaults["precision"], label="Precision", elem_id="precision")
                        if group == "sp":
                            inputs["nproc"] = gr.Number(value=defaults["nproc"], precision=0, label="Processes (NPROC_PER_NODE)", elem_id="nproc")
                            memory = gr.Textbox(value="80GiB", label="GPU memory per rank", elem_id="gpu_memory")
            with gr.Group():
                gr.Markdown("**Engine**")
                with gr.Row():
                    inputs["engine"] = gr.Dropdown(list(ENGINES), value=defaults["engine"], label="Engine", elem_id="engine")
                    for field in (f for f in FIELDS if f.group == "engine"):
                        inputs[field.key] = _component(field, defaults[field.key])
            with gr.Accordion("Other keys (YAML)", open=False):
                inputs["extra"] = gr.Code(value=BOARD_FIELDS["extra"], language="yaml", label="extra keys", elem_id="extra")
            with gr.Row():
                preview_button = gr.Button("Preview YAML / command", elem_id="preview_btn")
                rows_button = gr.Button("Preview data rows", elem_id="rows_btn")
                plan_button = gr.Button("Plan memory", elem_id="plan_btn")
                start_button = gr.Button("Start", variant="primary", elem_id="start_btn")
            with gr.Row():
                config_path = gr.Textbox(label="Config file", placeholder="examples/my_run.yaml", elem_id="config_path")
                save_button = gr.Button("Save config", elem_id="save_btn")
                load_button = gr.Button("Load config", elem_id="load_btn")
            with gr.Row():
                yaml_view = gr.Code(language="yaml", label="Config YAML", interactive=False, elem_id="yaml_preview")
                with gr.Column():
                    command_view = gr.Textbox(label="Command", interactive=False, elem_id="command_preview")
                    layout_view = gr.Textbox(label="SP layout / memory plan", lines=6, interactive=False, elem_id="sp_layout")
            rows_view = gr.Textbox(label="Encoded rows (trained spans in ⟦ ⟧)", lines=8, interactive=False, elem_id="rows_preview")
            gr.Markdown("### Runs")
            with gr.Row():
                run_select = gr.Dropdown(choices=[], label="Run", elem_id="run_select", scale=3)
                stop_button = gr.Button("Stop", variant="stop", elem_id="stop_btn")
                resume_button = gr.Button("Resume from last checkpoint", elem_id="resume_btn")
            runs_table = gr.Dataframe(headers=["run", "status", "step", "loss", "folder"], interactive=False, elem_id="runs_table")
            progress_view = gr.HTML(_progress_html(RunView()), elem_id="progress")
            with gr.Row():
                with gr.Column(scale=3):
                    plot = gr.LinePlot(_curve_frame([]), x="step", y="value", color="curve", title="loss", elem_id="loss_plot")
                    curves_view = gr.Markdown("no points yet", elem_id="curves_line")
                final_view = gr.JSON(label="Final metrics", elem_id="final_metrics", scale=2)
            log_view = gr.Textbox(label="Log", lines=14, max_lines=14, autoscroll=True, interactive=False, elem_id="run_log")
        with gr.Tab("Chat"):
            with gr.Row():
                chat_model = gr.Textbox(label="Model", elem_id="chat_model")
                chat_adapter = gr.Textbox(label="Adapter (optional)", elem_id="chat_adapter")
                chat_template = gr.Dropdown(["", *sorted(TEMPLATES)], value="", label="Template", elem_id="chat_template")
                chat_tokens = gr.Number(value=128, precision=0, label="Max new tokens", elem_id="chat_tokens")
            with gr.Row():
                chat_from_run = gr.Button("Use the selected run", elem_id="chat_from_run")
                chat_load = gr.Button("Load", variant="primary", elem_id="chat_load")
            chatbot = gr.Chatbot(label="Chat", elem_id="chatbot")
            chat_input = gr.Textbox(label="Message", placeholder="Ask something and press Enter", elem_id="chat_input")
        with gr.Tab("Export"):
            with gr.Row():
                export_model = gr.Textbox(label="Model", elem_id="export_model")
                export_adapter = gr.Textbox(label="Adapter (merged in)", elem_id="export_adapter")
                export_template = gr.Dropdown(["", *sorted(TEMPLATES)], value="", label="Template", elem_id="export_template")
            with gr.Row():
                export_dir = gr.Textbox(label="Export folder", elem_id="export_dir")
                export_size = gr.Number(value=5, label="Shard size (GB)", elem_id="export_size")
            with gr.Row():
                export_from_run = gr.Button("Use the selected run", elem_id="export_from_run")
                export_button = gr.Button("Export", variant="primary", elem_id="export_btn")
        shown = gr.State(None)  # what the last refresh showed, so an idle run sends nothing
        timer = gr.Timer(REFRESH_S)

        form = [inputs[name] for name in NAMES]

        def values_of(args) -> dict:
            return dict(zip(NAMES, args))

        def guarded(function, failure_outputs: int):
            """Run a button's action; a user error becomes the message line, the rest unchanged."""

            def run(*args):
                try:
                    return function(*args)
                except USER_ERRORS as err:
                    text = str(err) if not isinstance(err, KeyError) else str(err.args[0])
                    return (text, *[gr.skip()] * failure_outputs) if failure_outputs else text

            return run

        def on_preview(*args):
            note, text, command, layout = board.preview(values_of(args))
            return note, text, command, layout

        def on_plan(memory_text, *args):
            return "ok: planned", board.plan(values_of(args), memory_text)

        def on_rows(*args):
            return "ok: the first rows as the model sees them", board.rows(values_of(args))

        def on_start(*args):
            note, output_dir = board.start(values_of(args))
            return note, gr.update(choices=board.run_choices(), value=output_dir)

        def on_load(path):
            values, note = board.load(path)
            dataset_choices = dataset_names(values.get("dataset_dir"))
            updates = [gr.update(value=values[name]) for name in NAMES]
            updates[NAMES.index("dataset")] = gr.update(choices=dataset_choices, value=values["dataset"] or [])
            return (note, *updates)

        def on_dataset_dir(folder, chosen):
            names = dataset_names(folder)
            return gr.update(choices=names, value=[n for n in (chosen or []) if n in names])

        def refresh(selected, last):
            view = board.view(selected)
            table = board.runs_table()
            signature = (selected, view.status, len(view.log), len(view.points), len(table), str(table))
            if signature == last:
                return (gr.skip(),) * 7 + (last,)
            return (
                gr.update(choices=board.run_choices(), value=selected),
                table,
                _progress_html(view),
                _curve_frame(view.points),
                view.curves_line(),
                view.final or None,
                view.log,
                signature,
            )

        def on_chat(message_text, history, tokens):
            history = list(history or []) + [{"role": "user", "content": message_text}]
            try:
                for partial in board.chat.reply(history[:-1], message_text, tokens):
                    yield "", history + [{"role": "assistant", "content": partial}], gr.skip()
            except USER_ERRORS as err:
                yield message_text, history[:-1], str(err)

        def on_export(*args):
            return board.export(*args)

        def on_from_run(selected):
            return ("ok: the selected run's model", *board.model_of_run(selected))

        def on_stage_or_type(stage, finetuning):
            return [
                gr.update(visible=(f.stages is None or stage in f.stages) and (f.finetuning is None or finetuning in f.finetuning))
                for f in FIELDS
                if f.stages or f.finetuning
            ]

        conditional = [inputs[f.key] for f in FIELDS if f.stages or f.finetuning]
        for trigger in (inputs["stage"], inputs["finetuning_type"]):
            trigger.change(on_stage_or_type, [inputs["stage"], inputs["finetuning_type"]], conditional)
        demo.load(on_stage_or_type, [inputs["stage"], inputs["finetuning_type"]], conditional)
        demo.load(on_dataset_dir, [inputs["dataset_dir"], inputs["dataset"]], inputs["dataset"])
        inputs["dataset_dir"].blur(on_dataset_dir, [inputs["dataset_dir"], inputs["dataset"]], inputs["dataset"])
        inputs["dataset_dir"].submit(on_dataset_dir, [inputs["dataset_dir"], inputs["dataset"]], inputs["dataset"])
        preview_button.click(guarded(on_preview, 3), form, [message, yaml_view, command_view, layout_view])
        plan_button.click(guarded(on_plan, 1), [memory, *form], [message, layout_view])
        rows_button.click(guarded(on_rows, 1), form, [message, rows_view])
        start_button.click(guarded(on_start, 1), form, [message, run_select])
        save_button.click(guarded(lambda path, *args: board.save(values_of(args), path), 0), [config_path, *form], message)
        load_button.click(guarded(on_load, len(form)), config_path, [message, *form])
        stop_button.click(guarded(board.stop, 0), run_select, message)
        resume_button.click(guarded(board.resume, 0), run_select, message)
        outputs = [run_select, runs_table, progress_view, plot, curves_view, final_view, log_view, shown]
        timer.tick(refresh, [run_select, shown], outputs, show_progress="hidden")
        run_select.change(lambda selected: refresh(selected, None), run_select, outputs, show_progress="hidden")
        chat_from_run.click(guarded(on_from_run, 3), run_select, [message, chat_model, chat_adapter, chat_template])
        chat_load.click(guarded(board.load_chat, 0), [chat_model, chat_adapter, chat_template, chat_tokens], message)
        chat_input.submit(on_chat, [chat_input, chatbot, chat_tokens], [chat_input, chatbot, message])
        export_from_run.click(
            guarded(on_from_run, 3), run_select, [message, export_model, export_adapter, export_template]
        )
        export_button.click(
            guarded(on_export, 0), [export_model, export_adapter, export_template, export_dir, export_size], message
        )
    return demo
