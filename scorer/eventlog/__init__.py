"""The inference event log: one JSON event per sampled answer, published to Kafka.

- `event`: the sampling rule, what a logged request's event holds, and its encoding;
- `producer`: the per-worker producer: a bounded queue, delivery reports, the flush at exit.

Modules here import `scorer.codec`, `scorer.record`, `scorer.models.model` and `scorer.metrics`,
never the HTTP layer or the app.
"""
