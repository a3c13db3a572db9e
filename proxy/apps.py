from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"

    def ready(self) -> None:
        # Each provider hands the code that must not import proxy what it needs of it: budgets
        # its cheaper-model rule, compression where its messages keep their text.
        from budgets import routes
        from proxy import compression
        from proxy.providers import REGISTRY

        for provider in REGISTRY.values():
            routes.register(provider.name, provider.cheap_routes)
            compression.register_slots(provider.name, provider.compression_slots)
