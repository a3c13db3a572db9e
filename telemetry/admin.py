from django.contrib import admin

from telemetry.models import ModelPrice


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Prices here win over the shipped catalog, for every name that resolves to the model."""

    list_display = (
        "model",
        "provider",
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "cache_write_1h_per_mtok",
        "source",
        "updated_at",
    )
    list_filter = ("provider", "source")
    search_fields = ("model",)
    readonly_fields = ("updated_at",)

    def save_model(self, request, obj, form, change) -> None:  # type: ignore[no-untyped-def]
        obj.source = "admin"
        super().save_model(request, obj, form, change)
