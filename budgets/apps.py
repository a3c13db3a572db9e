from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "budgets"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Listen to the ledger writer, which knows nothing of budgets (telemetry.writer has
        the hooks' contract): spend settles in the transaction that writes the rows, alerts
        follow the commit, and the leases go after the writer's last rows at a clean stop.
        And show where the budgets stand on the dashboard's overview."""
        from budgets import dashboard, leases, settlement
        from telemetry import dashboard as telemetry_dashboard
        from telemetry import writer

        writer.on_batch(settlement.settle_batch)
        writer.on_give_up(settlement.forget)
        writer.on_stop(leases.release_at_stop)
        telemetry_dashboard.add_to_overview(dashboard.budgets_section)
