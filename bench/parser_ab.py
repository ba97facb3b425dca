"""A/B: gunicorn's C HTTP parser (gunicorn_h1c, `gunicorn[fast]`) against its pure-Python one.

The S1 workload (warm cache, 30 streams) on the service and on the floor app, each with
`--http-parser fast` and `--http-parser python`, wrk rounds alternated in one run. Needs
gunicorn_h1c installed in the venv (`pip install 'gunicorn[fast]'`).

    python bench/parser_ab.py [--rounds 5] [--seconds 5]
"""

import argparse
import json
import sys

from alone import fresh_bench, output_path
from load import Workload
from scenarios import compare
from servers import ServerSpec


def specs(model: str, endpoint: str) -> list[ServerSpec]:
    """The fast-parser service first (the ratios are it over each other server)."""
    out = []
    for kind in ("ours", "floor"):
        for parser in ("fast", "python"):
            out.append(
                ServerSpec(
                    kind,
                    model if kind == "ours" else "",
                    2,
                    endpoint if kind == "ours" else "",
                    extra_env=(("GUNICORN_CMD_ARGS", f"--http-parser {parser}"),),
                    variant=f"parser={parser}",
                )
            )
    return out


def main() -> int:
    """Run the A/B and print medians and per-round ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    try:
        import gunicorn_h1c  # noqa: F401
    except ImportError:
        print("gunicorn_h1c is not installed: pip install 'gunicorn[fast]'", file=sys.stderr)
        return 2
    with fresh_bench("parser", rounds=args.rounds, seconds=args.seconds) as bench:
        result = compare(bench, specs(bench.models["simple"], bench.endpoint), Workload(30))
    out = output_path("parser-ab", short=False)
    out.write_text(json.dumps(result, indent=1))
    for label, s in result["summary"].items():
        print(f"{label:45} {s['rps']:>9} req/s  p99 {s['p99_ms']} ms  errors {s['errors']}")
    for other, r in result["ratios"].items():
        print(f"ours fast / {other:35} rps {r['rps']['median']}  p99 {r['p99']['median']}")
    print(f"results: {out.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
