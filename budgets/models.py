"""Budgets arrive with issue 4; the app exists so its migrations have a home."""
