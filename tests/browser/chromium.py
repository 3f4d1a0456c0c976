"""How browser tests and the preview bench start Debian's Chromium (no `playwright install`)."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these, Chromium tries to reach Google's services and this machine has no network.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
