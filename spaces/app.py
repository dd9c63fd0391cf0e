"""Hugging Face Space: preview a dataset curated with sft-callbacks.

Everything lives in ``sft_callbacks.app``; this file only reads the Space's settings:

* ``SFT_DATASET``: the dataset opened when the page loads (a Hub dataset repo id, e.g. ``my-org/curated-sft``);
  the page has a textbox to open another one.
* ``SFT_DATASET_REVISION``: optional branch / tag / commit of it.
* ``HF_TOKEN`` (a secret): only for private or gated datasets.

On a Space (``SPACE_ID`` is set) the textbox opens Hub repos only, never the Space's own disk.
Run it locally with ``sft-callbacks preview DIR_OR_REPO`` or ``SFT_DATASET=./export python spaces/app.py``.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from sft_callbacks.app import build_app, launch_kwargs  # noqa: E402

demo = build_app(os.environ.get("SFT_DATASET"), os.environ.get("SFT_DATASET_REVISION"))

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
