"""The Gradio wiring of the preview (also the Hugging Face Space in ``spaces/``): :func:`build_app` and
:func:`launch`."""

from __future__ import annotations

import json
import math
import os
from typing import Any

# Before gradio / huggingface_hub are imported: no analytics or telemetry calls leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from .plots import pixel_to_data, plot_data_map, plot_mixture, plot_weights
from .render import card_summary_html, message_html, render_messages, render_stats
from .source import CuratedSource, _first_line, open_source
from .split import DATA_MAP_POINTS, PAGE_SIZES, ROW_ORDER, SourceError


_CSS = """
.sft-status {padding: 6px 10px; border-radius: 6px; margin: 2px 0;}
.sft-info {background: #eef5ff;} .sft-warn {background: #fff6e0;} .sft-error {background: #ffe8e8; color: #8a1020;}
.sft-chat {display: flex; flex-direction: column; gap: 6px;}
.sft-msg {border: 1px solid #ddd; border-radius: 8px; padding: 6px 10px;}
.sft-role-user {background: #f3f7ff;} .sft-role-assistant {background: #f4fbf4;} .sft-role-system {background: #f7f7f7;}
.sft-msg-head span {color: #777; font-size: 0.85em;}
.sft-msg-text {white-space: pre-wrap; word-break: break-word; margin: 4px 0 0; font-family: ui-monospace, monospace; font-size: 0.9em;}
.sft-stats th {text-align: left; padding-right: 12px; font-weight: 600;} .sft-missing {color: #999; font-style: italic;}
"""


def launch_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch`` (Gradio 6 takes ``css`` / ``theme`` there)."""
    return {"css": _CSS, "ssr_mode": False}


def _empty_table():
    import pandas as pd

    return pd.DataFrame({"row": []})


def build_app(source: str | None = None, revision: str | None = None, *, allow_local: bool | None = None):
    """The Gradio app: ``source`` (folder or Hub repo id, optional) is opened when the page loads.

    ``allow_local`` (default: ``True`` except on a Hugging Face Space, i.e. when ``SPACE_ID`` is set) lets
    the textbox open local folders; the configured ``source`` is always allowed. Every event has an
    ``api_name`` (``/open``, ``/query``, ``/sample``, ``/plots``, ``/pick``), so ``gradio_client`` can drive it.

    Example:
        >>> demo = build_app("sft_callbacks_output/export")  # doctest: +SKIP
        >>> demo.launch(**launch_kwargs())  # doctest: +SKIP
    """
    import gradio as gr

    if allow_local is None:
        allow_local = not os.environ.get("SPACE_ID")
    default_source = (source or "").strip()
    default_revision = (revision or "").strip()

    def get(src_name: str, rev: str) -> CuratedSource:
        local_ok = allow_local or ((src_name or "").strip() == default_source and bool(default_source))
        return open_source(src_name, rev or None, allow_local=local_ok)

    def fail(e: Exception) -> str:
        if isinstance(e, (SourceError, IndexError)):
            return message_html(str(e), "error")
        # unexpected: still a message, never a traceback in the page
        return message_html(f"Something went wrong: {type(e).__name__}: {_first_line(e)}", "error")

    with gr.Blocks(title="sft-callbacks: curated dataset preview") as demo:
        gr.HTML("<h2 style='margin:0'>Curated dataset preview</h2><div>Rows, training dynamics and provenance "
                "of a dataset curated with <b>sft-callbacks</b>.</div>")  # fmt: skip
        with gr.Row():
            src_box = gr.Textbox(label="Dataset (local export folder or Hub repo id)", value=default_source, scale=4,
                                 placeholder="my-org/curated-sft or ./export")  # fmt: skip
            rev_box = gr.Textbox(label="Revision (Hub only)", value=default_revision, scale=1, placeholder="main")
            open_btn = gr.Button("Open", variant="primary", scale=0, min_width=90)
        status = gr.HTML(label="Status", value=message_html("Open a curated dataset."), elem_id="sft-status")
        # what is open now: every event reads these, so an edited textbox does nothing until "Open"
        cur_src = gr.Textbox(visible=False, label="opened source")
        cur_rev = gr.Textbox(visible=False, label="opened revision")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Rows"):
                        with gr.Row():
                            split_dd = gr.Dropdown(label="Split", choices=[], allow_custom_value=True, scale=1)
                            group_col = gr.Dropdown(label="Group column", choices=[], allow_custom_value=True, scale=1)
                            groups_dd = gr.Dropdown(label="Groups", choices=[], multiselect=True, allow_custom_value=True, scale=2)
                        with gr.Row():
                            regions_dd = gr.Dropdown(label="Region", choices=[], multiselect=True, allow_custom_value=True, elem_id="sft-region", scale=2)
                            flags_dd = gr.Dropdown(label="Flags", choices=[], multiselect=True, allow_custom_value=True, scale=2)
                            wmin = gr.Number(label="Weight ≥", value=None, scale=1)
                            wmax = gr.Number(label="Weight ≤", value=None, scale=1)
                        with gr.Row():
                            search_box = gr.Textbox(label="Search text", placeholder="substring of prompt / completion / messages", scale=3)
                            sort_dd = gr.Dropdown(label="Sort by (server-side)", choices=[ROW_ORDER], value=ROW_ORDER, allow_custom_value=True, scale=2)
                            desc_cb = gr.Checkbox(label="Descending", value=False, scale=1)
                        with gr.Row():
                            prev_btn = gr.Button("◀ Previous", size="sm", scale=1, min_width=80)
                            page_num = gr.Number(label="Page", value=1, precision=0, minimum=1, scale=1, min_width=80)
                            page_size = gr.Dropdown(label="Rows per page", choices=list(PAGE_SIZES), value=50,
                                                    allow_custom_value=True, scale=1, min_width=80)  # fmt: skip
                            next_btn = gr.Button("Next ▶", size="sm", scale=1, min_width=80)
                        page_info = gr.HTML(label="Page info", value="", elem_id="sft-page-info")
                        table = gr.Dataframe(label="Rows (click a row to open its sample)", value=_empty_table(), interactive=False,
                                             max_height=520, wrap=False, elem_id="sft-table")  # fmt: skip
                    with gr.Tab("Data map"):
                        colour_dd = gr.Dropdown(label="Colour by", choices=["region"], value="region", allow_custom_value=True)
                        map_img = gr.Image(label="Data map (click a point to open its sample)", type="numpy", interactive=False,
                                           elem_id="sft-data-map", buttons=[])  # fmt: skip
                        map_note = gr.HTML(label="Data map note")
                        with gr.Row(visible=False):
                            pick_x = gr.Number(label="variability")
                            pick_y = gr.Number(label="confidence")
                    with gr.Tab("Weights & mixture"):
                        weight_img = gr.Image(label="Weight histogram", type="numpy", interactive=False, buttons=[],
                                              elem_id="sft-weights")
                        weight_note = gr.HTML(label="Weights note", elem_id="sft-weights-note")
                        mixture_img = gr.Image(label="Per-group mixture", type="numpy", interactive=False, buttons=[],
                                               elem_id="sft-mixture")
                        mixture_note = gr.HTML(label="Mixture note", elem_id="sft-mixture-note")
                    with gr.Tab("Provenance card"):
                        card_html = gr.HTML(label="Provenance summary")
                        card_code = gr.Code(label="README.md (dataset card, as text)", language="markdown", interactive=False)
                        plots_gallery = gr.Gallery(label="Plots from the export", columns=3, height=260)
            with gr.Column(scale=2):
                row_num = gr.Number(label="Sample row", value=None, precision=0, elem_id="sft-row")
                sample_html = gr.HTML(label="Sample", value=message_html("Click a row or a data-map point."), elem_id="sft-sample")
                stats_html = gr.HTML(label="Statistics", elem_id="sft-stats")
                raw_code = gr.Code(label="Row as JSON", language="json", interactive=False, max_lines=16)

        filters = [cur_src, cur_rev, split_dd, group_col, groups_dd, regions_dd, flags_dd, wmin, wmax, search_box,
                   sort_dd, desc_cb, page_num, page_size]  # fmt: skip

        def do_query(src_name, rev, split, gcol, groups, regions, flags, lo, hi, search, sort_by, desc, page, size):
            try:
                src = get(src_name, rev)
                p = src.query(split or None, group_column=gcol or None, groups=groups or (), regions=regions or (),
                              flags=flags or (), weight_min=lo, weight_max=hi, search=search or "",
                              sort_by=sort_by or None, descending=bool(desc), page=int(page or 1),
                              page_size=int(size or 50))  # fmt: skip
                return p.rows, message_html(p.describe()), p.page
            except Exception as e:
                return _empty_table(), fail(e), 1

        def do_open(src_name, rev):
            try:
                src = get(src_name, rev)
            except Exception as e:
                # cur_src stays empty, so later events do nothing with a source that failed
                return (fail(e), "", "", *[gr.update()] * (len(open_outputs) - 3))
            split = next(iter(src.splits))
            p = src.query(split)
            regions = src.values(split, "region")
            wr = src.weight_range(split)
            notes = [f"Opened {src.label}" + (f" @ {src.revision}" if src.revision else "") + ": "
                     + ", ".join(f"{n} ({s.num_rows:,} rows)" for n, s in src.splits.items())]  # fmt: skip
            msg = message_html(notes[0]) + "".join(message_html(w, "warn") for w in src.warnings)
            colours = ["region"] if "region" in src.columns else []
            colours += [*src.flag_columns, *[g for g in src.group_candidates[:1]]]
            gallery = [(str(path), name) for name, path in src.plots.items()]
            return (
                msg, src_name, rev or "",
                gr.update(choices=list(src.splits), value=split),
                gr.update(choices=src.group_candidates, value=src.group_column, visible=bool(src.group_candidates)),
                gr.update(choices=src.values(split, src.group_column), value=[], visible=bool(src.group_column)),
                gr.update(choices=regions, value=[], visible=bool(regions)),
                gr.update(choices=src.flag_choices(), value=[], visible=bool(src.flag_columns)),
                gr.update(value=None, visible=wr is not None, info=f"min {wr[0]:.3g}" if wr else None),
                gr.update(value=None, visible=wr is not None, info=f"max {wr[1]:.3g}" if wr else None),
                gr.update(choices=src.sort_choices(), value=ROW_ORDER),
                p.rows, message_html(p.describe()), p.page,
                gr.update(choices=colours or ["region"], value=(colours or ["region"])[0]),
                card_summary_html(src), src.card or "(no README.md)", gallery,
            )

        open_outputs = [status, cur_src, cur_rev, split_dd, group_col, groups_dd, regions_dd, flags_dd, wmin, wmax,
                        sort_dd, table, page_info, page_num, colour_dd, card_html, card_code, plots_gallery]  # fmt: skip

        def do_plots(src_name, rev, split, gcol, colour):
            try:
                src = get(src_name, rev)
            except Exception as e:
                return None, fail(e), None, "", None, ""
            try:
                dm = src.data_map(split or None, colour or "region")
                if dm is None:
                    map_msg = message_html("Data map: not recorded (no confidence / variability columns: DataMapCallback did not run).", "warn")
                else:
                    map_msg = message_html(f"{dm['row'].size:,} points of {dm['total']:,} (seeded sample when larger than {DATA_MAP_POINTS:,})"
                                           + (f"; {dm['unplaced']:,} rows seen in fewer than 2 epochs have no variability and are not placed" if dm.get("unplaced") else "")
                                           + ". Click a point to open its sample.")
                w_img = plot_weights(src, split or None)
                w_msg = "" if w_img is not None else message_html("Weights: not recorded (no sampling policy ran).", "warn")
                m_img, m_msg = plot_mixture(src, split or None, gcol or src.group_column)
                return plot_data_map(dm, colour or "region"), map_msg, w_img, w_msg, m_img, m_msg
            except Exception as e:
                return None, fail(e), None, "", None, ""

        plot_inputs = [cur_src, cur_rev, split_dd, group_col, colour_dd]
        plot_outputs = [map_img, map_note, weight_img, weight_note, mixture_img, mixture_note]

        def do_sample(src_name, rev, split, row):
            try:
                if row is None or (isinstance(row, float) and math.isnan(row)):
                    return message_html("Click a row or a data-map point."), "", ""
                src = get(src_name, rev)
                data = src.sample(split or None, int(row))
                raw = json.dumps(data, ensure_ascii=False, indent=1, default=str)
                return render_messages(data), render_stats(data, src, int(row), split or next(iter(src.splits))), raw
            except Exception as e:
                return fail(e), "", ""

        sample_inputs = [cur_src, cur_rev, split_dd, row_num]
        sample_outputs = [sample_html, stats_html, raw_code]

        def do_pick(src_name, rev, split, colour, x, y):
            try:
                src = get(src_name, rev)
                row = src.nearest(split or None, float(x), float(y), colour or "region")
                return row
            except Exception:
                return None

        def on_table_select(evt):
            # the first column is the row's position in the split, whatever the sort order
            try:
                return int((evt.row_value or [None])[0])
            except (TypeError, ValueError):
                return None

        def on_map_select(src_name, rev, split, colour, evt):
            try:
                src = get(src_name, rev)
                dm = src.data_map(split or None, colour or "region")
                if dm is None or not isinstance(evt.index, (list, tuple)):
                    return None
                x, y = pixel_to_data(dm, float(evt.index[0]), float(evt.index[1]))
                return src.nearest(split or None, x, y, colour or "region")
            except Exception:
                return None

        # real classes, not the strings that `from __future__ import annotations` leaves: gradio injects the
        # event data by looking at the annotation
        on_table_select.__annotations__["evt"] = gr.SelectData
        on_map_select.__annotations__["evt"] = gr.SelectData

        opened = open_btn.click(do_open, [src_box, rev_box], open_outputs, api_name="open")
        src_box.submit(do_open, [src_box, rev_box], open_outputs, api_name=False).then(
            do_plots, plot_inputs, plot_outputs, api_name=False)  # fmt: skip
        opened.then(do_plots, plot_inputs, plot_outputs, api_name="plots")
        if default_source:
            demo.load(do_open, [src_box, rev_box], open_outputs, api_name=False).then(
                do_plots, plot_inputs, plot_outputs, api_name=False)  # fmt: skip

        query_outputs = [table, page_info, page_num]
        query_btn = gr.Button("Apply filters", visible=False)
        query_btn.click(do_query, filters, query_outputs, api_name="query")

        def first_page(*args):
            return do_query(*args[:-2], 1, args[-1])

        for comp in (groups_dd, regions_dd, flags_dd, sort_dd, desc_cb, page_size):
            comp.input(first_page, filters, query_outputs, api_name=False)
        for comp in (wmin, wmax, search_box):
            comp.submit(first_page, filters, query_outputs, api_name=False)
        group_col.input(lambda s, r, sp, g: gr.update(choices=_safe_values(get, s, r, sp, g), value=[]),
                        [cur_src, cur_rev, split_dd, group_col], groups_dd, api_name=False).then(
            first_page, filters, query_outputs, api_name=False)  # fmt: skip
        split_dd.input(first_page, filters, query_outputs, api_name=False).then(
            do_plots, plot_inputs, plot_outputs, api_name=False)  # fmt: skip
        page_num.submit(do_query, filters, query_outputs, api_name=False)
        prev_btn.click(lambda *a: do_query(*a[:-2], max(1, int(a[-2] or 1) - 1), a[-1]), filters, query_outputs, api_name=False)
        next_btn.click(lambda *a: do_query(*a[:-2], int(a[-2] or 1) + 1, a[-1]), filters, query_outputs, api_name=False)

        table.select(on_table_select, None, row_num, api_name=False).then(do_sample, sample_inputs, sample_outputs, api_name=False)
        row_num.submit(do_sample, sample_inputs, sample_outputs, api_name="sample")
        colour_dd.input(do_plots, plot_inputs, plot_outputs, api_name=False)
        map_img.select(on_map_select, [cur_src, cur_rev, split_dd, colour_dd], row_num, api_name=False).then(
            do_sample, sample_inputs, sample_outputs, api_name=False)  # fmt: skip
        pick_btn = gr.Button("pick", visible=False)
        pick_btn.click(do_pick, [cur_src, cur_rev, split_dd, colour_dd, pick_x, pick_y], row_num, api_name="pick")
    return demo


def _safe_values(get, s, r, split, column) -> list[str]:
    try:
        return get(s, r).values(split or None, column)
    except Exception:
        return []


def launch(source: str | None, revision: str | None = None, host: str = "127.0.0.1", port: int | None = None,
           share: bool = False, **kwargs: Any):  # fmt: skip
    """Serve the preview of ``source`` (export folder or Hub repo id) locally; blocks until interrupted.

    ``port=None`` lets Gradio pick (``GRADIO_SERVER_PORT`` or the first free port from 7860). ``share=True``
    asks Gradio for a public link (it then talks to gradio.live). Other keyword arguments go to ``launch``.

    Example:
        >>> launch("sft_callbacks_output/export", port=7861)  # doctest: +SKIP
    """
    demo = build_app(source, revision, allow_local=True)
    return demo.launch(server_name=host, server_port=port, share=share, **{**launch_kwargs(), **kwargs})
