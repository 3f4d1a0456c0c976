"""The server-rendered dashboard (Jinja2 templates in web/templates)."""
