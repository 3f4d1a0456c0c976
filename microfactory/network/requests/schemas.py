"""What the request endpoints take and answer."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from microfactory.machines.models import MachineKind


class SendRequest(BaseModel):
    """A member (or an operator for them) sends a design to another shop to be made."""

    model_config = ConfigDict(extra="forbid")

    shop_url: str | None = Field(
        None, max_length=500, description="the other shop's base URL (else found on the hubs)"
    )
    shop_id: str | None = Field(
        None, max_length=64, description="its id (from routing); checked against its key"
    )
    design_id: int
    parameters: dict[str, Any] = Field(default_factory=dict)
    material: str | None = Field(None, max_length=64)
    quantity: int = Field(1, ge=1, le=50)
    due_date: dt.date
    contact: str | None = Field(
        None, max_length=200, description="shared with the other shop only if given"
    )
    member_id: int | None = Field(None, description="operators: the member it is sent for")

    @model_validator(mode="after")
    def _names_a_shop(self) -> SendRequest:
        if not self.shop_url and not self.shop_id:
            raise ValueError("name the other shop: its shop_url, or its shop_id from routing")
        return self


class Accept(BaseModel):
    """B accepts: the quote is made from B's own rates."""

    model_config = ConfigDict(extra="forbid")

    machine_kind: MachineKind | None = None
    machine_id: int | None = None
    file_id: int | None = Field(None, description="the design file to make, if several")
    hours: float = Field(0, ge=0, le=10000, description="estimated machine hours per piece")
    material_g: float = Field(0, ge=0, le=1_000_000, description="estimated grams per piece")
    note: str | None = Field(None, max_length=500)


class Counter(BaseModel):
    """B proposes another date, and (with hours and grams) a quote for it.

    If the requesting shop agrees, the request is accepted with these terms by itself.
    """

    model_config = ConfigDict(extra="forbid")

    date: dt.date
    reason: str = Field(min_length=1, max_length=500)
    machine_kind: MachineKind | None = None
    machine_id: int | None = None
    file_id: int | None = None
    hours: float = Field(0, ge=0, le=10000, description="estimated machine hours per piece")
    material_g: float = Field(0, ge=0, le=1_000_000, description="estimated grams per piece")

    def terms(self) -> Accept:
        """Return what accepting on the requester's agreement will do."""
        return Accept(
            machine_kind=self.machine_kind,
            machine_id=self.machine_id,
            file_id=self.file_id,
            hours=self.hours,
            material_g=self.material_g,
            note=f"agreed to the date {self.date.isoformat()}",
        )


class CounterReply(BaseModel):
    """A (the member, or an operator) takes or turns down B's counter-offer."""

    model_config = ConfigDict(extra="forbid")

    agree: bool
    reason: str | None = Field(None, max_length=500)


class Decline(BaseModel):
    """B declines, with a reason."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


class Progress(BaseModel):
    """B reports how the job goes: started, finished (good or bad), collected."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["started", "finished", "collected"]
    outcome: Literal["good", "bad"] | None = None
    reason: str | None = Field(None, max_length=500)


class MessageRead(BaseModel):
    """One message of the log."""

    id: int
    at: dt.datetime
    direction: str
    kind: str
    sequence: int
    payload: dict[str, Any]
    jws: str
    delivery: str | None
    # A sent message's delivery: pending (not delivered yet, retrying), delivered, refused,
    # expired; None for a received message (or one delivered before the outbox).
    delivery_state: str | None = None
    delivery_attempts: int = 0
    next_attempt_at: dt.datetime | None = None


class RequestRead(BaseModel):
    """A request with its log."""

    id: str
    direction: str
    state: str
    peer_shop_id: str
    peer_url: str
    design_hash: str
    design_title: str
    parameters: dict[str, Any]
    material: str | None
    quantity: int
    due_date: str
    requester: str
    contact: str | None
    member_id: int | None
    job_id: int | None
    design_id: int | None
    quote: dict[str, Any] | None
    outcome: str | None
    proposed_date: str | None = None  # the counter-offer's date, if B made one
    created_at: dt.datetime
    updated_at: dt.datetime
    messages: list[MessageRead]


class Received(BaseModel):
    """What B answers to a request it accepted for consideration."""

    id: str
    state: str
    shop_id: str


class UpdateTaken(BaseModel):
    """What A answers to an update it took: nothing of the member's."""

    id: str
    state: str
    sequence: int


class NetworkStatementLine(BaseModel):
    """Work accepted for another shop, priced with the signed quote."""

    request_id: str
    accepted_at: dt.datetime
    customer: str  # the network customer's username here
    shop_id: str
    shop_url: str
    design_title: str
    quantity: int
    job_id: int
    job_state: str
    state: str
    machine_minutes: int
    material_grams: int
    total_cents: int


class NetworkStatement(BaseModel):
    """A month of work for other shops."""

    month: str
    lines: list[NetworkStatementLine]
    total_cents: int
