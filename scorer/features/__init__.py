"""Features from DynamoDB: what a request's streams, user and globals carry to the model.

- `cache`: the per-worker TLRU cache of feature values, within a byte budget;
- `store`: BatchGetItem against the table, retries and timeouts, items parsed;
- `fetcher`: one kind's lookups: the cache, reads in flight shared, chunked reads;
- `enrichment`: every kind a model reads, together, and the values applied to the request;
- `codecs`: decoding values stored encoded (`feature_codecs`).

Modules here import `scorer.metrics`, `scorer.record` and `scorer.payload`, never the models,
the app or the HTTP layer (a model's keys are read from it, its type only named).
"""
