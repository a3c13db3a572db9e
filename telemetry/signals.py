"""Price edits apply to the next row in this process, not after the override cache expires."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from telemetry import pricing
from telemetry.models import ModelPrice


@receiver([post_save, post_delete], sender=ModelPrice)
def _price_changed(**kwargs: object) -> None:
    pricing.clear_cache()
