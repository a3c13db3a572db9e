import os
import sys
import threading

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenpak_site.settings")
django_application = get_asgi_application()

# A serving process starts here (daphne, runserver, serve): config.yaml's budgets take effect.
from budgets.declared import apply_on_start  # noqa: E402
from proxy.handler import ProxyFirst  # noqa: E402
from telemetry.writer import writer  # noqa: E402

# uvicorn imports the app from inside its event loop, where Django refuses database calls.
_start = threading.Thread(target=apply_on_start, name="tokenpak-start")
_start.start()
_start.join()
# Now, not at the first request: it first writes the rows a killed process left in the spool.
writer.start()

# The ledger writer and the budget refresher are Python threads: with the default 5 ms switch
# interval a batch being priced holds the GIL for whole milliseconds while a request waits.
sys.setswitchinterval(0.0005)



def _stop() -> None:
    """A clean stop: the queued ledger rows first (they settle against the leases), then the
    writer's stop hooks (the budgets' leases go). atexit does the same where the server lets
    the process exit normally (daphne)."""
    writer.stop()


# Proxy routes skip Django's middleware and per-request signals (proxy/handler.py says why).
application = ProxyFirst(django_application, on_stop=_stop)
