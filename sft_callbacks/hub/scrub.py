"""Scrubbing what is written about a run so a card can be published as it is: local paths become their
basename, the home directory and the local user name are scrubbed and Hugging Face tokens are redacted
(:func:`sanitize`)."""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
# An absolute POSIX path (not the path part of a URL: no ':' or '/' or word character right before it), or a
# Windows one; matched greedily up to whitespace / quotes.
_ABS_PATH = re.compile(r"(?<![\w:/.~])(?:/|~/|[A-Za-z]:\\)[^\s\"'`<>|,;)(\]\[]+")


def _secrets(extra: Sequence[str] = ()) -> list[str]:
    """Tokens known to this process (explicit, environment, the stored login): never written anywhere."""
    found = [t for t in extra if t]
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(name):
            found.append(os.environ[name])
    try:
        from huggingface_hub import get_token

        token = get_token()
        if token:
            found.append(token)
    except Exception:  # no login, or an old huggingface_hub: nothing to redact
        pass
    return sorted({t for t in found if len(t) >= 4}, key=len, reverse=True)


def _private_roots() -> list[str]:
    roots = {os.path.expanduser("~"), os.getcwd()}
    import tempfile

    roots.add(tempfile.gettempdir())
    return sorted((r for r in roots if r and r not in ("/", "\\")), key=len, reverse=True)


def sanitize(obj: Any, *, tokens: Sequence[str] = ()) -> Any:
    """``obj`` (a JSON-like value) with local paths, the home directory, the user name and tokens scrubbed.

    Absolute paths become their last component, the user name as a path component becomes ``<user>``, and
    Hugging Face tokens (the given ``tokens``, ``HF_TOKEN``, the stored login and anything shaped like
    ``hf_...``) become ``<redacted>``. URLs are kept.

    Example:
        >>> sanitize({"model": "/home/alice/models/llama-ft", "note": "token hf_abcdefghijklmnopqrstuvwxyz0123"})
        {'model': 'llama-ft', 'note': 'token <redacted>'}
    """
    secrets = _secrets(tokens)
    roots = _private_roots()
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers): nothing to scrub
        user = ""

    def clean(s: str) -> str:
        for t in secrets:
            s = s.replace(t, "<redacted>")
        s = _HF_TOKEN.sub("<redacted>", s)
        for root in roots:  # paths under a private root keep only their last component
            s = re.sub(re.escape(root) + r"[/\\]?([^\s\"'`<>]*)", lambda m: _basename(m.group(1)) or ".", s)
        s = _ABS_PATH.sub(lambda m: _basename(m.group(0)), s)
        if user:  # the user name as a path component or an address (user@host), not as an English word
            s = re.sub(rf"(?<=[/\\]){re.escape(user)}(?=[/\\]|$)|\b{re.escape(user)}(?=@)", "<user>", s)
        return s

    def walk(x):
        if isinstance(x, str):
            return clean(x)
        if isinstance(x, Mapping):
            return {clean(str(k)): walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        return x

    return walk(obj)


def _basename(path: str) -> str:
    return re.split(r"[/\\]", path.rstrip("/\\"))[-1]


__all__ = ["sanitize"]
