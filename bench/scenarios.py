"""The scenarios, as data: what each measures, its load shape, its servers with their models.

`bench/run.py` runs them (all the `make bench` ones by default, or `--only NAME,...`);
`bench/report.py` renders what they return and checks their goals. A scenario is one row: to
add one, add a row, and a shape in `shapes.py` only if none drives the servers as it needs.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import overload
import reloading
import shapes
import soak
from load import Workload
from servers import ServerSpec


@dataclass(frozen=True)
class Scenario:
    """One row: a name, what it measures, the load shape with its servers and options."""

    name: str
    title: str
    shape: Callable[..., dict[str, Any]]
    servers: tuple[ServerSpec, ...]
    options: dict[str, Any] = field(default_factory=dict)
    in_make_bench: bool = True


def ours(model: str = "", **more: Any) -> ServerSpec:
    """Our service, 2 workers unless told."""
    return ServerSpec("ours", model, **more)


def seed(model: str = "", **more: Any) -> ServerSpec:
    """The seed service (haystack-ml-stack 0.1.0 on uvicorn), 2 workers."""
    return ServerSpec("seed", model, **more)


def parser(kind: str, name: str) -> ServerSpec:
    """Ours or the floor with one of gunicorn's HTTP parsers (`fast` needs gunicorn_h1c)."""
    env = (("GUNICORN_CMD_ARGS", f"--http-parser {name}"),)
    return ServerSpec(kind, "simple" if kind == "ours" else "", env=env, variant=f"parser={name}")


SCENARIOS = [
    Scenario(
        "s1",
        "Warm cache, 30 streams x 3 features, one dict per stream out: ours, the seed, the floor",
        shapes.closed,
        (ours("ranked"), seed("ranked"), ServerSpec("floor")),
    ),
    Scenario(
        "s2",
        "Warm cache, 100 streams: past 33 the seed scores without features; the samples show it",
        shapes.closed,
        (ours("simple"), seed("simple")),
        {"workload": Workload(100)},
    ),
    Scenario(
        "s3",
        "Fresh streams on every request (30 each), then ours: 100-stream vs 10-stream cold latency",
        shapes.cold,
        (ours("simple"), seed("simple")),
    ),
    Scenario(
        "s4",
        "CPU-heavy model (~2 ms predict): throughput with 1, 2 and 4 workers, ours vs the seed",
        shapes.by_workers,
        (ours("cpu"), seed("cpu")),
        {"workers": (1, 2, 4)},
    ),
    Scenario(
        "s5",
        "Memory model served by 1 and by 4 workers: total PSS after N requests, and 4w/1w",
        shapes.memory,
        (ours("memory"), ours("memory", gc_freeze=False), seed("memory")),
        {"requests": 2000},
    ),
    Scenario(
        "s6",
        "Identical cold requests at once: DynamoDB keys read per unique key, counted by moto",
        shapes.stampede,
        (ours("simple"), seed("simple")),
        {"copies": 16},
    ),
    Scenario(
        "s10",
        "Closed loop below capacity, 8 and 16 connections: every answer must be a 2xx",
        shapes.below_capacity,
        (ours(),),
        {"models": ("ranked", "cpu4"), "conns": (8, 16), "seconds": 6.0},
    ),
    Scenario(
        "s11",
        "Warm, 30 streams: the history model (4 user, 2 global features, a 50-stream history of"
        " 2 features) beside the same model reading stream features only",
        shapes.closed,
        (ours("history", variant="history"), ours("simple", variant="streams")),
    ),
    Scenario(
        "kafka",
        "Ours with the inference event log on (every user logged, tansu up) against it off",
        shapes.kafka,
        (
            ours("ranked", variant="kafka=on", env=(("KAFKA_FRACTION", "1"),)),
            ours("ranked", variant="kafka=off"),
        ),
    ),
    Scenario(
        "s7",
        "Mixed load: 2 connections of ~30 ms-CPU requests beside 6 of ordinary ones, ours vs seed",
        shapes.mixed,
        (ours("mixed"), seed("mixed")),
        {"heavy_conns": 2, "ordinary_conns": 6},
    ),
    Scenario(
        "s8",
        "Open-loop load at 0.5x and 0.8x of each server's capacity: p50/p99/p99.9, ours vs seed",
        shapes.fixed_load,
        (ours(), seed()),
        {"models": ("simple", "cpu4"), "loads": (0.5, 0.8)},
    ),
    Scenario(
        "s9",
        "Overload: 0.5x to 4x each server's capacity, open loop, 250 ms deadline (4 ms-CPU model)",
        overload.overload,
        (
            ours("cpu4", name="ours"),
            ours("cpu4", name="ours, no shedding", env=(("SHEDDING", "false"),)),
            seed("cpu4", name="seed"),
        ),
        {"loads": (0.5, 0.8, 1.0, 2.0, 4.0), "deadline_ms": 250.0},
    ),
    Scenario(
        "reload",
        "A new model version published under the S1 load: errors, switch time, p99, PSS",
        reloading.reload,
        (ours("simple"),),
    ),
    Scenario(
        "parser",
        "gunicorn's C HTTP parser (gunicorn_h1c) against its Python one, ours and the floor, S1"
        " workload (needs `pip install 'gunicorn[fast]'`)",
        shapes.closed,
        tuple(parser(kind, name) for kind in ("ours", "floor") for name in ("fast", "python")),
        in_make_bench=False,
    ),
    Scenario(
        "soak",
        "`make soak`: 5 minutes at 70% of capacity, workers recycling; RSS and metric files flat",
        soak.soak,
        (ours("simple"),),
        {"minutes": 5.0, "max_requests": 2000, "load": 0.7, "streams": 10},
        in_make_bench=False,
    ),
]
BY_NAME = {s.name: s for s in SCENARIOS}
