"""A blocking SMTP sender (stdlib smtplib), called from a thread by the outbox."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit


class SmtpError(Exception):
    """The SMTP URL is invalid or the server refused the message."""


def send(url: str, sender: str, to: str, subject: str, body: str, timeout: float = 20.0) -> None:
    """Send one plain-text message through smtp://, smtp+starttls:// or smtps:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in {"smtp", "smtps", "smtp+starttls"} or not parts.hostname:
        raise SmtpError("smtp_url must look like smtp+starttls://user:pass@host:587")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body or subject)
    context = ssl.create_default_context()
    try:
        if parts.scheme == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                parts.hostname, parts.port or 465, timeout=timeout, context=context
            )
        else:
            client = smtplib.SMTP(parts.hostname, parts.port or 25, timeout=timeout)
        with client:
            if parts.scheme == "smtp+starttls":
                client.starttls(context=context)
            if parts.username:
                client.login(unquote(parts.username), unquote(parts.password or ""))
            client.send_message(msg)
    except smtplib.SMTPException as exc:
        raise SmtpError(str(exc)) from exc
