from django.contrib.admin import apps as admin_apps


class AdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with TokenPak's site (tokenpak_site/admin.py). Imported as a module,
    not a class: Django takes an AppConfig class found in apps.py for this package's own."""

    default = False  # not this package's own app config
    default_site = "tokenpak_site.admin.Site"
