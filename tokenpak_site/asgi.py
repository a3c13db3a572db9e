import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenpak_site.settings")
application = get_asgi_application()

# A serving process starts here (daphne, runserver, serve): config.yaml's budgets take effect.
from budgets.declared import apply_on_start  # noqa: E402

apply_on_start()
