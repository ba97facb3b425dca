"""The model's life: loading and checking it, where it comes from, and swapping it live.

- `model`: unpickling and checking the model dict (its keys, names and codecs);
- `source`: S3 or a local path, versions and digests;
- `staging`: a new version downloaded and tried in a process of its own;
- `reload`: the master's swap on SIGHUP, keeping the running version on any failure;
- `poller`: a worker's watch for a new version, which signals the master.

Modules here import `scorer.features.codecs`, `scorer.metrics` and `scorer.errors`, never the
HTTP layer or the app.
"""
