"""A Gradio app (also the Hugging Face Space in ``spaces/``) that previews a curated dataset.

It opens an export folder written by :func:`~sft_callbacks.hub.publish.save_curated_dataset` (``README.md``,
``provenance.json``, ``data/<split>-*.parquet``, ``plots/*.png``), or the Hub dataset repo it was pushed to,
and shows a paged, sortable, filterable table, a sample viewer (chat turns by role, with the row's
statistics), the data map (click a point to open its sample), the weight histogram, the group mixture over
training and the provenance card.

Modules: :mod:`.split` and :mod:`.source` read the data, :mod:`.render` and :mod:`.plots` draw it,
:mod:`.ui` wires it to Gradio. Two layers:

* :class:`CuratedSource` reads the parquet shards with ``pyarrow`` and answers queries on the server: the few
  columns that filters and sorting need are read once (column projection) and kept as arrays; a page reads
  only the row groups that hold its rows. A 1M-row dataset opens without reading its text, and the browser
  only ever receives one page.
* :func:`build_app` wires it to Gradio. Sample text is always shown as text: it goes through
  :func:`html.escape` into HTML this module builds, or into ``gr.Code`` / ``gr.Dataframe`` cells; it never
  reaches ``gr.Markdown`` / ``gr.Chatbot``. Every handler turns errors into a message in the page.

Run it with ``sft-callbacks preview DIR_OR_REPO`` (:func:`launch`) or deploy ``spaces/`` as a Space.
"""

from .ui import build_app, launch, launch_kwargs  # first: it turns gradio's analytics and the Hub's telemetry off
from .plots import pixel_to_data, plot_data_map, plot_mixture, plot_weights  # noqa: I001
from .render import escape, messages_of, render_messages
from .source import CuratedSource, open_source
from .split import Page, SourceError

__all__ = ["CuratedSource", "Page", "SourceError", "build_app", "escape", "launch", "launch_kwargs",
           "messages_of", "open_source", "pixel_to_data", "plot_data_map", "plot_mixture", "plot_weights",
           "render_messages"]  # fmt: skip
