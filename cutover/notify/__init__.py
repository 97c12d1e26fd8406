"""Webhook notifications from the persisted journal (PRODUCT.md, Signals for on-call)."""

from cutover.notify.notifier import Notifier
from cutover.notify.payload import NOTIFIED, event_id
from cutover.notify.webhook import RetryPolicy

__all__ = ["NOTIFIED", "Notifier", "RetryPolicy", "event_id"]
