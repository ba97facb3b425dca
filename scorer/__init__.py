"""scorer: a low-latency scoring service for CPU-bound ML models.

The layers, each importing only those below it: `app` and `worker` (the process), `http` (the
`/score` path and OpenAPI), `scoring` with `eventlog`, then `features` and `models`, then
`serving` (the gunicorn worker), and under all of them `errors`, `metrics`, `logs`, `record`,
`payload` and `codec`. `scorer.app.create_app` builds the app; `wsgi.py` calls it.
"""

__version__ = "0.1.0"
