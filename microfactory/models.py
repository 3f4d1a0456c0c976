"""Import every model so that the metadata is complete (Alembic and tests use this)."""

from microfactory.accounts.models import ApiToken, LoginFailure, User
from microfactory.bookings.models import (
    Booking,
    BookingLock,
    BookingPolicy,
    CalendarToken,
    Certification,
    Closure,
    MachineProfile,
    MaintenanceBlock,
    OpeningHours,
    Quota,
    Suspension,
)
from microfactory.costs.models import MachineKindRate, MaterialRate, MembershipPlan, PlanMembership
from microfactory.db import Base
from microfactory.designs.models import Design, DesignFile
from microfactory.fabrication.models import SlicerProfile
from microfactory.jobs.models import Job, JobEvent
from microfactory.leases import SchedulerLease
from microfactory.machines.models import Machine
from microfactory.materials.models import MaterialStock
from microfactory.network.hub.designs import HubDesign, HubDesignList
from microfactory.network.hub.models import HubOffer, HubReport, HubShop, HubShopIndex, HubUpstream
from microfactory.network.models import PushStatus, ReportSequence, ShopProfile
from microfactory.network.requests.models import (
    FabricationRequest,
    OutboxItem,
    PeerKey,
    RequestMessage,
)
from microfactory.notifications.models import (
    Notification,
    NotificationChannel,
    NotificationDelivery,
    NotificationPreference,
)
from microfactory.usage.models import UsageRecord

__all__ = [
    "ApiToken",
    "Base",
    "Booking",
    "BookingLock",
    "BookingPolicy",
    "CalendarToken",
    "Certification",
    "Closure",
    "Design",
    "DesignFile",
    "FabricationRequest",
    "HubDesign",
    "HubDesignList",
    "HubOffer",
    "HubReport",
    "HubShop",
    "HubShopIndex",
    "HubUpstream",
    "Job",
    "JobEvent",
    "LoginFailure",
    "Machine",
    "MachineKindRate",
    "MachineProfile",
    "MaintenanceBlock",
    "MaterialRate",
    "MaterialStock",
    "MembershipPlan",
    "Notification",
    "NotificationChannel",
    "NotificationDelivery",
    "NotificationPreference",
    "OpeningHours",
    "OutboxItem",
    "PeerKey",
    "PlanMembership",
    "PushStatus",
    "Quota",
    "ReportSequence",
    "RequestMessage",
    "SchedulerLease",
    "ShopProfile",
    "SlicerProfile",
    "Suspension",
    "UsageRecord",
    "User",
]
