"""Push channels through apprise (ntfy, Matrix, Telegram, Slack, JSON webhooks, ...).

Apprise URLs carry their secrets (tokens, passwords) in the URL itself, so this module is the
only place a full URL is handled: it checks a URL, masks it for display (apprise's own
per-service privacy mode), and sends. Apprise's logger does not reach the app's logs: its
debug lines print the request URL and payload. Its warnings are captured per send and
returned with the URL's secret parts cut out. apprise is synchronous (requests): callers run
`send` in a thread.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlsplit

import apprise


def _quiet() -> None:
    """Keep apprise's log lines (they print URLs) out of the app's handlers.

    Set on every call, not once at import: logging.config (alembic's, a host's) resets
    existing loggers to propagate again.
    """
    logging.getLogger("apprise").propagate = False


class PushError(Exception):
    """The URL is not one apprise can use, or the service refused or did not answer."""


def check(url: str) -> str:
    """Return the URL's masked form if apprise can send to it, else raise PushError."""
    _quiet()
    try:
        plugin = apprise.Apprise.instantiate(url.strip())
    except Exception:  # a URL apprise's parsers trip over is no URL it can send to
        plugin = None
    if plugin is None:
        raise PushError(
            "not an apprise URL this server can send to (e.g. ntfy://topic, "
            "json://host/path, mailto://...): check the scheme and its fields"
        )
    return str(plugin.url(privacy=True))


def masked(url: str) -> str:
    """Return the URL as it may be shown back: never in full.

    Apprise's privacy form hides passwords and the tokens it knows of; webhook-style URLs
    (json://host/path/<token>) keep their path, so every path segment is cut to its first two
    characters too, as is a "host" that is no host name (ntfy://<topic>), and the query
    (apprise's options, sometimes a token) is dropped.
    """
    try:
        shown = check(url)
    except PushError:
        return url.split("://", 1)[0] + "://…"
    head, _, _query = shown.partition("?")
    scheme, _, rest = head.partition("://")
    host, _, path = rest.partition("/")
    segments = [seg if len(seg) < 4 else seg[:2] + "…" for seg in path.split("/")]
    if not any(c in host for c in ".:@[") and host != "localhost" and len(host) >= 4:
        host = host[:2] + "…"  # not a host name: a topic or token (ntfy://<topic>)
    return f"{scheme}://{host}" + ("/" + "/".join(segments) if path else "")


def redact(text: str, url: str) -> str:
    """Cut the URL and every secret-looking part of it (user, password, path, query) out."""
    parts = urlsplit(url)
    pieces = {url, parts.netloc, parts.password or "", parts.username or "", parts.query}
    pieces.update(unquote(p) for p in list(pieces))
    pieces.update(seg for seg in re.split(r"[/?&=]", parts.path + "/" + parts.query) if seg)
    if parts.hostname and parts.scheme not in {"json", "xml", "form", "http", "https"}:
        pieces.add(parts.hostname)  # e.g. tgram://<bot token>/...: the "host" is the secret
    for piece in sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True):
        text = text.replace(piece, "…")
    return text


def send(url: str, title: str, body: str) -> None:
    """Send one message to an apprise URL; raise PushError (redacted) when it fails."""
    _quiet()
    client = apprise.Apprise()
    if not client.add(url.strip()):
        raise PushError("not an apprise URL this server can send to")
    with apprise.LogCapture(level=logging.WARNING) as captured:
        try:
            ok = client.notify(title=title, body=body or title)
        except Exception as exc:  # a service plugin's bug: a failed attempt, retried later
            raise PushError(redact(f"{type(exc).__name__}: {exc}", url)[:400]) from None
        lines = captured.getvalue()
    if not ok:
        # LogCapture lines read "<time> - WARNING - <message>": keep the messages.
        messages = [line.rsplit(" - ", 1)[-1] for line in lines.splitlines() if line.strip()]
        reason = "; ".join(messages) or "the service did not accept the message"
        raise PushError(redact(reason, url)[:400])
