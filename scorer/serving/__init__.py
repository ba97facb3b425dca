"""The gunicorn worker and what it does around the app: the layer below every request.

`worker.ScorerWorker` is the one gunicorn worker class (`gunicorn.conf.py`); it hands each
concern to a collaborator of its own module, each testable without gunicorn:

- `line`: when a request was queued for a thread, how long it waited, the line's pace;
- `admission`: refusing a request as it arrives while the line stands (no thread taken);
- `shedding`: the policy both the worker and the app refuse by (CoDel, deadlines, gone clients);
- `balancing`: leaving a new connection to a less busy worker for a moment;
- `deadlines`: whole-phase read deadlines for a request's head and body;
- `draining`: a graceful stop that refuses new connections, and retiring around a stuck request;
- `sockets`: non-blocking reads and peeks on a client's socket.

Modules here import `scorer.errors`, `scorer.metrics` and gunicorn, never the app's modules.
"""
