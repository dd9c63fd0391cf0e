"""The Gradio wiring of the preview (also the Hugging Face Space in ``spaces/``): :func:`build_app` and
:func:`launch`."""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

# Before gradio / huggingface_hub are imported: no analytics or telemetry calls leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from .plots import pixel_to_data, plot_data_map, plot_mixture, plot_weights
from .render import card_summary_html, message_html, render_messages, render_stats
from .source import CuratedSource, _first_line, open_source
from .split import DATA_MAP_POINTS, PAGE_SIZES, ROW_ORDER, SourceError

if TYPE_CHECKING:
    import gradio as gr


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


# What a handler returns: {output component: its new value, or ``gr.update(...)``}; outputs it leaves out keep
# what they show.
_Updates = dict[Any, Any]


class _Ui:
    """The components that events read or update; the layout steps set them."""

    # source and status
    src_box: gr.Textbox
    rev_box: gr.Textbox
    open_btn: gr.Button
    status: gr.HTML
    cur_src: gr.Textbox
    cur_rev: gr.Textbox
    # table and filters
    split_dd: gr.Dropdown
    group_col: gr.Dropdown
    groups_dd: gr.Dropdown
    regions_dd: gr.Dropdown
    flags_dd: gr.Dropdown
    wmin: gr.Number
    wmax: gr.Number
    search_box: gr.Textbox
    sort_dd: gr.Dropdown
    desc_cb: gr.Checkbox
    prev_btn: gr.Button
    page_num: gr.Number
    page_size: gr.Dropdown
    next_btn: gr.Button
    page_info: gr.HTML
    table: gr.Dataframe
    # plots
    colour_dd: gr.Dropdown
    map_img: gr.Image
    map_note: gr.HTML
    pick_x: gr.Number
    pick_y: gr.Number
    weight_img: gr.Image
    weight_note: gr.HTML
    mixture_img: gr.Image
    mixture_note: gr.HTML
    # provenance card
    card_html: gr.HTML
    card_code: gr.Code
    plots_gallery: gr.Gallery
    # sample viewer
    row_num: gr.Number
    sample_html: gr.HTML
    stats_html: gr.HTML
    raw_code: gr.Code

    # The input lists are the handlers' parameters in order; the output lists are the order in which the API
    # (``gradio_client``) returns the values, so neither is reordered.
    @property
    def filters(self) -> list[Any]:
        """Inputs of ``/query``: the opened source, every filter, the sort, the page and its size."""
        return [self.cur_src, self.cur_rev, self.split_dd, self.group_col, self.groups_dd, self.regions_dd,
                self.flags_dd, self.wmin, self.wmax, self.search_box, self.sort_dd, self.desc_cb, self.page_num,
                self.page_size]  # fmt: skip

    @property
    def query_outputs(self) -> list[Any]:
        """Outputs of ``/query``: the page of rows, its description and its number."""
        return [self.table, self.page_info, self.page_num]

    @property
    def open_outputs(self) -> list[Any]:
        """Outputs of ``/open``: the status, what is open, every filter's choices, the first page, the card."""
        return [self.status, self.cur_src, self.cur_rev, self.split_dd, self.group_col, self.groups_dd,
                self.regions_dd, self.flags_dd, self.wmin, self.wmax, self.sort_dd, *self.query_outputs,
                self.colour_dd, self.card_html, self.card_code, self.plots_gallery]  # fmt: skip

    @property
    def plot_inputs(self) -> list[Any]:
        """Inputs of ``/plots``: the opened source, the split, the group column and the data map's colouring."""
        return [self.cur_src, self.cur_rev, self.split_dd, self.group_col, self.colour_dd]

    @property
    def plot_outputs(self) -> list[Any]:
        """Outputs of ``/plots``: each plot with its note."""
        return [self.map_img, self.map_note, self.weight_img, self.weight_note, self.mixture_img, self.mixture_note]

    @property
    def sample_inputs(self) -> list[Any]:
        """Inputs of ``/sample``: the opened source, the split and the row."""
        return [self.cur_src, self.cur_rev, self.split_dd, self.row_num]

    @property
    def sample_outputs(self) -> list[Any]:
        """Outputs of ``/sample``: the chat turns, the statistics and the row as JSON."""
        return [self.sample_html, self.stats_html, self.raw_code]


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
    ui = _Ui()
    handlers = _Handlers(ui, default_source, allow_local)
    with gr.Blocks(title="sft-callbacks: curated dataset preview") as demo:
        _build_layout(ui, default_source, (revision or "").strip())
        _wire_open(demo, ui, handlers, open_on_load=bool(default_source))
        _wire_query(ui, handlers)
        _wire_samples_and_plots(ui, handlers)
    return demo


def _build_layout(ui: _Ui, default_source: str, default_revision: str) -> None:
    """The page: the source controls on top, the tabs on the left and the sample viewer on the right."""
    import gradio as gr

    _source_controls(ui, default_source, default_revision)
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Tabs():
                with gr.Tab("Rows"):
                    _table_and_filters(ui)
                with gr.Tab("Data map"):
                    _data_map_view(ui)
                with gr.Tab("Weights & mixture"):
                    _weights_and_mixture(ui)
                with gr.Tab("Provenance card"):
                    _card_view(ui)
        with gr.Column(scale=2):
            _sample_viewer(ui)


def _source_controls(ui: _Ui, default_source: str, default_revision: str) -> None:
    """The title, the dataset and revision boxes with the Open button, the status line and what is open."""
    import gradio as gr

    gr.HTML("<h2 style='margin:0'>Curated dataset preview</h2><div>Rows, training dynamics and provenance "
            "of a dataset curated with <b>sft-callbacks</b>.</div>")  # fmt: skip
    with gr.Row():
        ui.src_box = gr.Textbox(label="Dataset (local export folder or Hub repo id)", value=default_source, scale=4,
                                placeholder="my-org/curated-sft or ./export")  # fmt: skip
        ui.rev_box = gr.Textbox(label="Revision (Hub only)", value=default_revision, scale=1, placeholder="main")
        ui.open_btn = gr.Button("Open", variant="primary", scale=0, min_width=90)
    ui.status = gr.HTML(label="Status", value=message_html("Open a curated dataset."), elem_id="sft-status")
    # what is open now: every event reads these, so an edited textbox does nothing until "Open"
    ui.cur_src = gr.Textbox(visible=False, label="opened source")
    ui.cur_rev = gr.Textbox(visible=False, label="opened revision")


def _table_and_filters(ui: _Ui) -> None:
    """The "Rows" tab: split, group, region, flag, weight and text filters, sorting, paging and the table."""
    import gradio as gr

    with gr.Row():
        ui.split_dd = gr.Dropdown(label="Split", choices=[], allow_custom_value=True, scale=1)
        ui.group_col = gr.Dropdown(label="Group column", choices=[], allow_custom_value=True, scale=1)
        ui.groups_dd = gr.Dropdown(label="Groups", choices=[], multiselect=True, allow_custom_value=True, scale=2)
    with gr.Row():
        ui.regions_dd = gr.Dropdown(label="Region", choices=[], multiselect=True, allow_custom_value=True,
                                    elem_id="sft-region", scale=2)  # fmt: skip
        ui.flags_dd = gr.Dropdown(label="Flags", choices=[], multiselect=True, allow_custom_value=True, scale=2)
        ui.wmin = gr.Number(label="Weight ≥", value=None, scale=1)
        ui.wmax = gr.Number(label="Weight ≤", value=None, scale=1)
    with gr.Row():
        ui.search_box = gr.Textbox(label="Search text", placeholder="substring of prompt / completion / messages",
                                   scale=3)  # fmt: skip
        ui.sort_dd = gr.Dropdown(label="Sort by (server-side)", choices=[ROW_ORDER], value=ROW_ORDER,
                                 allow_custom_value=True, scale=2)  # fmt: skip
        ui.desc_cb = gr.Checkbox(label="Descending", value=False, scale=1)
    with gr.Row():
        ui.prev_btn = gr.Button("◀ Previous", size="sm", scale=1, min_width=80)
        ui.page_num = gr.Number(label="Page", value=1, precision=0, minimum=1, scale=1, min_width=80)
        ui.page_size = gr.Dropdown(label="Rows per page", choices=list(PAGE_SIZES), value=50, allow_custom_value=True,
                                   scale=1, min_width=80)  # fmt: skip
        ui.next_btn = gr.Button("Next ▶", size="sm", scale=1, min_width=80)
    ui.page_info = gr.HTML(label="Page info", value="", elem_id="sft-page-info")
    ui.table = gr.Dataframe(label="Rows (click a row to open its sample)", value=_empty_table(), interactive=False,
                            max_height=520, wrap=False, elem_id="sft-table")  # fmt: skip


def _data_map_view(ui: _Ui) -> None:
    """The "Data map" tab: the colouring, the clickable map, its note and the hidden ``/pick`` coordinates."""
    import gradio as gr

    ui.colour_dd = gr.Dropdown(label="Colour by", choices=["region"], value="region", allow_custom_value=True)
    ui.map_img = gr.Image(label="Data map (click a point to open its sample)", type="numpy", interactive=False,
                          elem_id="sft-data-map", buttons=[])  # fmt: skip
    ui.map_note = gr.HTML(label="Data map note")
    with gr.Row(visible=False):
        ui.pick_x = gr.Number(label="variability")
        ui.pick_y = gr.Number(label="confidence")


def _weights_and_mixture(ui: _Ui) -> None:
    """The "Weights & mixture" tab: the weight histogram and the per-group mixture, each with its note."""
    import gradio as gr

    ui.weight_img = gr.Image(label="Weight histogram", type="numpy", interactive=False, buttons=[],
                             elem_id="sft-weights")  # fmt: skip
    ui.weight_note = gr.HTML(label="Weights note", elem_id="sft-weights-note")
    ui.mixture_img = gr.Image(label="Per-group mixture", type="numpy", interactive=False, buttons=[],
                              elem_id="sft-mixture")  # fmt: skip
    ui.mixture_note = gr.HTML(label="Mixture note", elem_id="sft-mixture-note")


def _card_view(ui: _Ui) -> None:
    """The "Provenance card" tab: the provenance summary, the dataset card as text and the exported plots."""
    import gradio as gr

    ui.card_html = gr.HTML(label="Provenance summary")
    ui.card_code = gr.Code(label="README.md (dataset card, as text)", language="markdown", interactive=False)
    ui.plots_gallery = gr.Gallery(label="Plots from the export", columns=3, height=260)


def _sample_viewer(ui: _Ui) -> None:
    """The sample viewer: the row number, its chat turns, its statistics and the row as JSON."""
    import gradio as gr

    ui.row_num = gr.Number(label="Sample row", value=None, precision=0, elem_id="sft-row")
    ui.sample_html = gr.HTML(label="Sample", value=message_html("Click a row or a data-map point."),
                             elem_id="sft-sample")  # fmt: skip
    ui.stats_html = gr.HTML(label="Statistics", elem_id="sft-stats")
    ui.raw_code = gr.Code(label="Row as JSON", language="json", interactive=False, max_lines=16)


def _wire_open(demo: gr.Blocks, ui: _Ui, handlers: _Handlers, open_on_load: bool) -> None:
    """Opening a source (the button, Enter in the box, or the page load for a configured one), then its plots."""
    plots = (handlers.plots, ui.plot_inputs, ui.plot_outputs)
    source = [ui.src_box, ui.rev_box]
    opened = ui.open_btn.click(handlers.open, source, ui.open_outputs, api_name="open")
    ui.src_box.submit(handlers.open, source, ui.open_outputs, api_name=False).then(*plots, api_name=False)
    opened.then(*plots, api_name="plots")
    if open_on_load:
        demo.load(handlers.open, source, ui.open_outputs, api_name=False).then(*plots, api_name=False)


def _wire_query(ui: _Ui, handlers: _Handlers) -> None:
    """Filters, sorting and paging query the table again; changing a filter goes back to page 1."""
    import gradio as gr

    filters, outputs = ui.filters, ui.query_outputs
    # the endpoint for ``gradio_client``: the page itself queries through the events below
    query_btn = gr.Button("Apply filters", visible=False)
    query_btn.click(handlers.query, filters, outputs, api_name="query")
    for comp in (ui.groups_dd, ui.regions_dd, ui.flags_dd, ui.sort_dd, ui.desc_cb, ui.page_size):
        comp.input(handlers.first_page, filters, outputs, api_name=False)
    for comp in (ui.wmin, ui.wmax, ui.search_box):
        comp.submit(handlers.first_page, filters, outputs, api_name=False)
    ui.group_col.input(handlers.group_choices, [ui.cur_src, ui.cur_rev, ui.split_dd, ui.group_col], [ui.groups_dd],
                       api_name=False).then(handlers.first_page, filters, outputs, api_name=False)  # fmt: skip
    ui.split_dd.input(handlers.first_page, filters, outputs, api_name=False).then(
        handlers.plots, ui.plot_inputs, ui.plot_outputs, api_name=False)  # fmt: skip
    ui.page_num.submit(handlers.query, filters, outputs, api_name=False)
    ui.prev_btn.click(handlers.previous_page, filters, outputs, api_name=False)
    ui.next_btn.click(handlers.next_page, filters, outputs, api_name=False)


def _wire_samples_and_plots(ui: _Ui, handlers: _Handlers) -> None:
    """A table row, a data-map point or the row box opens a sample; a new colouring redraws the plots."""
    import gradio as gr

    # real classes, not the strings that `from __future__ import annotations` leaves: gradio injects the
    # event data by looking at the annotation
    _Handlers.table_select.__annotations__["evt"] = gr.SelectData
    _Handlers.map_select.__annotations__["evt"] = gr.SelectData

    sample = (handlers.sample, ui.sample_inputs, ui.sample_outputs)
    ui.table.select(handlers.table_select, None, [ui.row_num], api_name=False).then(*sample, api_name=False)
    ui.row_num.submit(*sample, api_name="sample")
    ui.colour_dd.input(handlers.plots, ui.plot_inputs, ui.plot_outputs, api_name=False)
    ui.map_img.select(handlers.map_select, [ui.cur_src, ui.cur_rev, ui.split_dd, ui.colour_dd], [ui.row_num],
                      api_name=False).then(*sample, api_name=False)  # fmt: skip
    # the endpoint for ``gradio_client``: a data-map point by its coordinates instead of a click
    pick_btn = gr.Button("pick", visible=False)
    pick_btn.click(handlers.pick, [ui.cur_src, ui.cur_rev, ui.split_dd, ui.colour_dd, ui.pick_x, ui.pick_y],
                   [ui.row_num], api_name="pick")  # fmt: skip


class _Handlers:
    """The event handlers: each reads the source that "Open" opened and returns ``{component: update}``."""

    def __init__(self, ui: _Ui, default_source: str, allow_local: bool) -> None:
        self.ui = ui
        self.default_source = default_source
        self.allow_local = allow_local

    def get(self, src_name: str, rev: str) -> CuratedSource:
        """The source ``src_name`` at ``rev``; a local folder only where allowed or when it is the configured one."""
        local_ok = self.allow_local or ((src_name or "").strip() == self.default_source and bool(self.default_source))
        return open_source(src_name, rev or None, allow_local=local_ok)

    def open(self, src_name: str, rev: str) -> _Updates:
        """``/open``: the status, what is open, every filter's choices, the first page and the card."""
        import gradio as gr

        ui = self.ui
        try:
            src = self.get(src_name, rev)
        except Exception as e:
            # cur_src stays empty, so later events do nothing with a source that failed
            return {ui.status: _fail(e), ui.cur_src: "", ui.cur_rev: ""}
        split = next(iter(src.splits))
        p = src.query(split)
        regions = src.values(split, "region")
        wr = src.weight_range(split)
        note = (f"Opened {src.label}" + (f" @ {src.revision}" if src.revision else "") + ": "
                + ", ".join(f"{n} ({s.num_rows:,} rows)" for n, s in src.splits.items()))  # fmt: skip
        colours = ["region"] if "region" in src.columns else []
        colours += [*src.flag_columns, *src.group_candidates[:1]]
        return {
            ui.status: message_html(note) + "".join(message_html(w, "warn") for w in src.warnings),
            ui.cur_src: src_name,
            ui.cur_rev: rev or "",
            ui.split_dd: gr.update(choices=list(src.splits), value=split),
            ui.group_col: gr.update(choices=src.group_candidates, value=src.group_column,
                                    visible=bool(src.group_candidates)),
            ui.groups_dd: gr.update(choices=src.values(split, src.group_column), value=[],
                                    visible=bool(src.group_column)),
            ui.regions_dd: gr.update(choices=regions, value=[], visible=bool(regions)),
            ui.flags_dd: gr.update(choices=src.flag_choices(), value=[], visible=bool(src.flag_columns)),
            ui.wmin: gr.update(value=None, visible=wr is not None, info=f"min {wr[0]:.3g}" if wr else None),
            ui.wmax: gr.update(value=None, visible=wr is not None, info=f"max {wr[1]:.3g}" if wr else None),
            ui.sort_dd: gr.update(choices=src.sort_choices(), value=ROW_ORDER),
            ui.table: p.rows,
            ui.page_info: message_html(p.describe()),
            ui.page_num: p.page,
            ui.colour_dd: gr.update(choices=colours or ["region"], value=(colours or ["region"])[0]),
            ui.card_html: card_summary_html(src),
            ui.card_code: src.card or "(no README.md)",
            ui.plots_gallery: [(str(path), name) for name, path in src.plots.items()],
        }  # fmt: skip

    def query(self, src_name, rev, split, gcol, groups, regions, flags, lo, hi, search, sort_by, desc, page,
              size) -> _Updates:  # fmt: skip
        """``/query``: one page of the filtered, sorted rows, its description and its number (clamped)."""
        ui = self.ui
        try:
            src = self.get(src_name, rev)
            p = src.query(split or None, group_column=gcol or None, groups=groups or (), regions=regions or (),
                          flags=flags or (), weight_min=lo, weight_max=hi, search=search or "",
                          sort_by=sort_by or None, descending=bool(desc), page=int(page or 1),
                          page_size=int(size or 50))  # fmt: skip
            return {ui.table: p.rows, ui.page_info: message_html(p.describe()), ui.page_num: p.page}
        except Exception as e:
            return {ui.table: _empty_table(), ui.page_info: _fail(e), ui.page_num: 1}

    def first_page(self, *filters: Any) -> _Updates:
        """The query's first page: a changed filter starts over."""
        return self.query(*filters[:-2], 1, filters[-1])

    def previous_page(self, *filters: Any) -> _Updates:
        """The page before the current one (the first stays the first)."""
        return self.query(*filters[:-2], max(1, int(filters[-2] or 1) - 1), filters[-1])

    def next_page(self, *filters: Any) -> _Updates:
        """The page after the current one (the query clamps it to the last)."""
        return self.query(*filters[:-2], int(filters[-2] or 1) + 1, filters[-1])

    def group_choices(self, src_name: str, rev: str, split: str, column: str) -> _Updates:
        """The values of a newly chosen group column as the group filter's choices, none selected."""
        import gradio as gr

        try:
            choices = self.get(src_name, rev).values(split or None, column)
        except Exception:
            choices = []
        return {self.ui.groups_dd: gr.update(choices=choices, value=[])}

    def plots(self, src_name: str, rev: str, split: str, gcol: str, colour: str) -> _Updates:
        """``/plots``: the data map, the weight histogram and the group mixture, each with its note."""
        ui = self.ui
        try:
            src = self.get(src_name, rev)
            dm = src.data_map(split or None, colour or "region")
            w_img = plot_weights(src, split or None)
            m_img, m_msg = plot_mixture(src, split or None, gcol or src.group_column)
            map_img = plot_data_map(dm, colour or "region")
        except Exception as e:
            return {ui.map_img: None, ui.map_note: _fail(e), ui.weight_img: None, ui.weight_note: "",
                    ui.mixture_img: None, ui.mixture_note: ""}  # fmt: skip
        w_msg = "" if w_img is not None else message_html("Weights: not recorded (no sampling policy ran).", "warn")
        return {ui.map_img: map_img, ui.map_note: _data_map_note(dm), ui.weight_img: w_img, ui.weight_note: w_msg,
                ui.mixture_img: m_img, ui.mixture_note: m_msg}  # fmt: skip

    def sample(self, src_name: str, rev: str, split: str, row: float | None) -> _Updates:
        """``/sample``: one row's chat turns, its statistics and the row as JSON."""
        ui = self.ui
        try:
            if row is None or (isinstance(row, float) and math.isnan(row)):
                return {ui.sample_html: message_html("Click a row or a data-map point."), ui.stats_html: "",
                        ui.raw_code: ""}  # fmt: skip
            src = self.get(src_name, rev)
            data = src.sample(split or None, int(row))
            stats = render_stats(data, src, int(row), split or next(iter(src.splits)))
            raw = json.dumps(data, ensure_ascii=False, indent=1, default=str)
            return {ui.sample_html: render_messages(data), ui.stats_html: stats, ui.raw_code: raw}
        except Exception as e:
            return {ui.sample_html: _fail(e), ui.stats_html: "", ui.raw_code: ""}

    def pick(self, src_name: str, rev: str, split: str, colour: str, x: float, y: float) -> _Updates:
        """``/pick``: the row of the data-map point nearest to (variability ``x``, confidence ``y``)."""
        try:
            row = self.get(src_name, rev).nearest(split or None, float(x), float(y), colour or "region")
        except Exception:
            row = None
        return {self.ui.row_num: row}

    def table_select(self, evt: gr.SelectData) -> _Updates:
        """The row of a clicked table cell."""
        # the first column is the row's position in the split, whatever the sort order
        try:
            row = int((evt.row_value or [None])[0])
        except (TypeError, ValueError):
            row = None
        return {self.ui.row_num: row}

    def map_select(self, src_name: str, rev: str, split: str, colour: str, evt: gr.SelectData) -> _Updates:
        """The row of the data-map point nearest to a click on the map."""
        try:
            src = self.get(src_name, rev)
            dm = src.data_map(split or None, colour or "region")
            row = None
            if dm is not None and isinstance(evt.index, (list, tuple)):
                x, y = pixel_to_data(dm, float(evt.index[0]), float(evt.index[1]))
                row = src.nearest(split or None, x, y, colour or "region")
        except Exception:
            row = None
        return {self.ui.row_num: row}


def _fail(e: Exception) -> str:
    """An error as a message in the page, never a traceback."""
    if isinstance(e, (SourceError, IndexError)):
        return message_html(str(e), "error")
    # unexpected: still a message
    return message_html(f"Something went wrong: {type(e).__name__}: {_first_line(e)}", "error")


def _data_map_note(dm: dict[str, Any] | None) -> str:
    """The note under the data map: how many points it shows, or why there is no map."""
    if dm is None:
        return message_html("Data map: not recorded (no confidence / variability columns: DataMapCallback did not "
                            "run).", "warn")  # fmt: skip
    unplaced = (f"; {dm['unplaced']:,} rows seen in fewer than 2 epochs have no variability and are not placed"
                if dm.get("unplaced") else "")  # fmt: skip
    return message_html(f"{dm['row'].size:,} points of {dm['total']:,} (seeded sample when larger than "
                        f"{DATA_MAP_POINTS:,}){unplaced}. Click a point to open its sample.")  # fmt: skip


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
