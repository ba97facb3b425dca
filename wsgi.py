"""The WSGI entry point: read settings, load the model once, build the app.

Under gunicorn (`preload_app = True`) this runs in the master before it forks the workers,
so the model is unpickled once and shared copy-on-write.
"""

from __future__ import annotations

import sys

from config import SettingsError, load_settings
from scorer.app import create_app
from scorer.features.store import StoreConfigError, check_region
from scorer.logs import configure_logging
from scorer.models.model import ModelError, load_model
from scorer.models.reload import ModelReloader

APP_LOAD_ERROR = 4
"""gunicorn's own exit status for an app that cannot be loaded."""

try:
    settings = load_settings()
    configure_logging(settings.log_level)
    model = load_model(settings)
    if model.stream_features:
        check_region(settings)
except (SettingsError, ModelError, StoreConfigError) as exc:
    # One line an operator can act on, instead of a traceback from inside gunicorn.
    print(f"scorer: cannot start: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(APP_LOAD_ERROR) from None

app = create_app(settings, model)
# SIGHUP (by hand, or from the poll) swaps the model in this process: see scorer/models/reload.py.
# Only the app's Scorer may hold the model, or a reload could not free the old one.
del model
app.extensions["scorer.reloader"] = ModelReloader(app.extensions["scorer"])
