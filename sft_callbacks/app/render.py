"""The preview's HTML: sample text always escaped, chat turns by role, row statistics, the card summary."""

from __future__ import annotations

import html
import json
import math
import re
from typing import TYPE_CHECKING, Any

from ..engine.columns import COLUMN_MEANINGS
from .split import ANNOTATION_COLUMNS, CORE_COLUMNS, TEXT_COLUMNS, _content_text, _str

if TYPE_CHECKING:
    from .source import CuratedSource


def escape(text: Any) -> str:
    """``text`` as inert HTML: ``html.escape`` plus ``$ { } ` `` so nothing reads as a template either.

    Example:
        >>> escape('<img src=x onerror="alert(1)"> ${x}')
        '&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &#36;&#123;x&#125;'
    """
    s = html.escape(_str(text), quote=True)
    return s.replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;").replace("`", "&#96;")


def messages_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The sample's turns: ``[{"role", "content", "turn", "column"}]`` from messages / prompt+completion / text.

    ``turn`` counts user messages (a system message is turn 0); plain-string prompt / completion become the
    roles ``prompt`` / ``completion``.

    Example:
        >>> [(m["role"], m["turn"]) for m in messages_of({"prompt": [{"role": "user", "content": "hi"}],
        ...                                               "completion": [{"role": "assistant", "content": "yo"}]})]
        [('user', 1), ('assistant', 1)]
    """
    out: list[dict[str, Any]] = []
    turn = 0
    for column in TEXT_COLUMNS:
        value = row.get(column)
        if value is None:
            continue
        if isinstance(value, list) and all(isinstance(m, dict) for m in value):
            for m in value:
                role = str(m.get("role") or "?")
                if role == "user":
                    turn += 1
                out.append({"role": role, "content": _content_text(m.get("content")), "turn": turn, "column": column})
        else:
            role = column if column != "messages" else "?"
            if role in ("prompt", "text"):
                turn += 1
            out.append({"role": role, "content": _content_text(value), "turn": max(turn, 1), "column": column})
    return out


def render_messages(row: dict[str, Any]) -> str:
    """The sample's turns as HTML built here: every piece of text escaped, so it renders as text."""
    msgs = messages_of(row)
    if not msgs:
        return '<div class="sft-note">No text column in this dataset (prompt / completion / messages / text): see the statistics.</div>'
    parts = []
    for m in msgs:
        role = escape(m["role"])
        cls = re.sub(r"[^a-z]", "", m["role"].lower())[:20] or "other"
        parts.append(
            f'<div class="sft-msg sft-role-{cls}"><div class="sft-msg-head"><b>{role}</b>'
            f' <span>turn {int(m["turn"])} · {escape(m["column"])}</span></div>'
            f'<pre class="sft-msg-text">{escape(m["content"])}</pre></div>'
        )
    return '<div class="sft-chat">' + "".join(parts) + "</div>"


def render_stats(row: dict[str, Any], src: CuratedSource, row_id: int, split: str) -> str:
    """The row's statistics (every annotation it carries, its meaning as the name's tooltip; the core ones that
    are absent in one "not recorded" line) and other scalar columns."""
    lines = [f"<tr><th>row</th><td>{int(row_id)} of split {escape(split)}</td></tr>"]
    for c in ANNOTATION_COLUMNS:
        if c in row:
            v = row[c]
            text = "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else (f"{v:.4g}" if isinstance(v, float) else str(v))
            lines.append(f'<tr><th title="{escape(COLUMN_MEANINGS[c])}">{escape(c)}</th><td>{escape(text)}</td></tr>')
    missing = [c for c in CORE_COLUMNS if c not in row]
    if missing:
        lines.append(f'<tr><th>not recorded</th><td class="sft-missing">{escape(", ".join(missing))}</td></tr>')
    for c, v in row.items():
        if c in ANNOTATION_COLUMNS or c in TEXT_COLUMNS or isinstance(v, (list, dict)):
            continue
        lines.append(f"<tr><th>{escape(c)}</th><td>{escape(v)}</td></tr>")
    return '<table class="sft-stats">' + "".join(lines) + "</table>"


def message_html(text: str, kind: str = "info") -> str:
    """A status line: ``kind`` is ``info``, ``warn`` or ``error``; the text is escaped."""
    return f'<div class="sft-status sft-{escape(kind)}">{escape(text)}</div>'


def card_summary_html(src: CuratedSource) -> str:
    """The provenance record as an HTML summary (escaped): source, model, counts, drops, callbacks, filters."""
    p = src.provenance
    if not p:
        return message_html("No provenance.json in this dataset: provenance not recorded.", "warn")
    rows = []

    def row(k, v):
        rows.append(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>")

    s = p.get("source") or {}
    row("source", " ".join(str(x) for x in (s.get("id") or "(in-memory dataset)", f"@ {s['revision']}" if s.get("revision") else "", s.get("fingerprint") or "") if x))
    m = p.get("model") or {}
    row("model", " ".join(str(x) for x in (m.get("id") or m.get("note") or "not recorded", f"@ {m['revision']}" if m.get("revision") else "") if x))
    t = p.get("training") or {}
    if t:
        row("training", f"{t.get('trainer')}: {t.get('global_step')} steps, {t.get('epochs')} epochs, seed {p.get('seed')}")
    c = p.get("counts") or {}
    row("rows", f"{c.get('rows_in', '?')} in → {c.get('rows_out', '?')} kept")
    for reason, n in (c.get("dropped") or {}).items():
        row(f"dropped: {reason}", n)
    for name, n in (p.get("splits") or {}).items():
        row(f"split {name}", n)
    for cb in p.get("callbacks") or []:
        row(f"callback {cb.get('name')}", json.dumps(cb.get("config", {}), sort_keys=True, default=str))
    if p.get("filters"):
        row("filters", json.dumps(p["filters"], sort_keys=True, default=str))
    row("created", p.get("created_at"))
    for pkg, v in (p.get("packages") or {}).items():
        if v:
            row(pkg, v)
    return '<table class="sft-stats">' + "".join(rows) + "</table>"
