"""What the admin pages share: a refused form's messages per field, with what was typed."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from microfactory import forms
from microfactory.errors import DomainError


@dataclass
class FormState:
    """One form's typed values and its refusal, for the page that shows it again."""

    name: str = ""  # which form of the page was sent
    typed: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # field -> plain words
    general: list[str] = field(default_factory=list)  # about the whole form

    @property
    def refused(self) -> bool:
        """Whether anything was refused."""
        return bool(self.errors or self.general)

    def refuse(self, exc: Exception, rename: dict[str, str] | None = None) -> FormState:
        """Record why the form was refused, in plain words next to the field where possible."""
        if isinstance(exc, ValidationError):
            fields, general = forms.plain_errors(exc.errors(), rename=rename)
            for key, message in fields.items():
                self.errors.setdefault(key, message)
            self.general.extend(general)
        elif isinstance(exc, DomainError) and exc.extra.get("field"):
            self.errors[str(exc.extra["field"])] = str(exc.extra.get("field_message", exc.detail))
        elif isinstance(exc, DomainError):
            self.general.append(exc.detail)
        else:
            self.general.append(str(exc))
        return self

    def summary(self) -> str:
        """One line for the top of the page."""
        return forms.summary(self.errors, self.general)
