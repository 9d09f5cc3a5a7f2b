import os
from importlib import import_module

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from payments_site.gc_tuning import tune_after_startup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payments_site.settings")
application = get_wsgi_application()
# The URLconf, and with it every view, DRF and the admin, is imported by the first request otherwise: import it
# now, so that it is part of what start-up freezes.
import_module(settings.ROOT_URLCONF)
tune_after_startup()
