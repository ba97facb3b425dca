"""The HTTP face of the service: `POST /score` in front of Flask, and the OpenAPI document.

- `fastpath`: `/score` as plain WSGI: the body read within its deadline, refusals, the answer;
- `openapi`: the document served at `/openapi.json`.

Modules here import the scoring path (`scorer.scoring`, `scorer.payload`, `scorer.codec`) and
`scorer.serving` (deadlines, the line, shedding), never the app.
"""
