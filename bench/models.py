"""Build the benchmark models and cloudpickle them to files: `python bench/models.py OUT_DIR`.

Run it with the seed venv's python (bench/.venv-seed, cloudpickle 2.2.1), as a script, so the
functions are pickled by value and both services load the very same bytes.
"""

import json
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

STREAM_FEATURES = ["f1", "f2", "f3"]
HEAVY_USER_PREFIX = "heavy"
Doc = dict[str, Any]
Row = tuple[Any, ...]
Ranked = list[tuple[str, Row]]


def preprocess(user: Doc, streams: list[Doc], playlist: Doc, params: Any) -> list[Row]:
    """Turn each stream into a tuple of its feature values (None when the store had none)."""
    return [tuple(s.get(f) for f in STREAM_FEATURES) for s in streams]


def predict_simple(rows: list[Row], params: Doc) -> Doc:
    """Score a weighted sum and count the feature values seen, to expose silent misses."""
    weights = params["weights"]
    scores = []
    seen = 0
    for row in rows:
        score = 0.0
        for w, v in zip(weights, row, strict=True):
            if v is not None:
                score += w * float(v)
                seen += 1
        scores.append(score)
    return {"scores": scores, "features_seen": seen}


def preprocess_ranked(user: Doc, streams: list[Doc], playlist: Doc, params: Any) -> Ranked:
    """Keep each stream's URL beside its feature values, to answer per stream."""
    return [(s["streamUrl"], tuple(s.get(f) for f in STREAM_FEATURES)) for s in streams]


def predict_ranked(rows: Ranked, params: Doc) -> list[Doc]:
    """Score like the simple model, answering one dict per stream, as ranking models do."""
    weights = params["weights"]
    out = []
    for url, values in rows:
        present = [(w, float(v)) for w, v in zip(weights, values, strict=True) if v is not None]
        score = sum(w * v for w, v in present)
        out.append({"streamUrl": url, "score": score, "features_seen": len(present)})
    return out


def burn_cpu(loops: int) -> float:
    """Spin a pure-Python loop; the result is returned so it cannot be skipped."""
    acc = 0.0
    for i in range(loops):
        acc += (i % 7) * 0.5
    return acc


def predict_cpu(rows: list[Row], params: Doc) -> Doc:
    """Score like the simple model after burning about 2 ms of CPU."""
    out = predict_simple(rows, params)
    out["burn"] = burn_cpu(params["loops"])
    return out


def preprocess_mixed(user: Doc, streams: list[Doc], playlist: Doc, params: Any) -> Doc:
    """Like preprocess, and say whether this request is a heavy one (by user id)."""
    heavy = str(user.get("userid", "")).startswith(HEAVY_USER_PREFIX)
    return {"rows": preprocess(user, streams, playlist, params), "heavy": heavy}


def predict_mixed(model_input: Doc, params: Doc) -> Doc:
    """Score like the simple model; a heavy user's request first burns about 30 ms of CPU."""
    out = predict_simple(model_input["rows"], params)
    if model_input["heavy"]:
        out["burn"] = burn_cpu(params["heavy_loops"])
    return out


def predict_memory(rows: list[Row], params: Doc) -> Doc:
    """Score like the simple model, reading the big array and dict so they stay live."""
    out = predict_simple(rows, params)
    big, table = params["big_array"], params["big_dict"]
    out["scores"] = [
        s + float(big[(i * 7919) % big.shape[0]]) + table[(i * 104729) % len(table)]
        for i, s in enumerate(out["scores"])
    ]
    return out


def calibrate_loops(target_seconds: float) -> int:
    """Find the loop count that burns target_seconds of CPU on this machine.

    The fastest of many short tries is taken: other processes can only slow a try down, so the
    minimum is the undisturbed cost, and the model costs the same from one run to the next.
    """
    probe = 50_000
    burn_cpu(probe)  # the first run pays for warming caches; do not count it
    timings = []
    for _ in range(25):
        start = time.perf_counter()
        burn_cpu(probe)
        timings.append(time.perf_counter() - start)
    return max(1, int(target_seconds / (min(timings) / probe)))


def model(predict: Any, prepare: Any = preprocess, more: Any = None, **params: Any) -> Any:
    """Return a model dict in the seed's format: the weights in its params, and those given."""
    params = {"weights": [0.5, 0.3, 0.2], **params}
    base = {"preprocess": prepare, "predict": predict, "stream_features": STREAM_FEATURES}
    return {**base, "params": params, **(more or {})}


def build_models() -> dict[str, Doc]:
    """Return the model dicts by name."""
    big_array = np.full(256 * 1024 * 1024 // 8, 1.5, dtype=np.float64)  # 256 MiB
    big_dict = {i: float(i) * 0.001 for i in range(1_000_000)}
    # The simple model given 4 user features (watched: a 50-stream history), 2 global ones and 2
    # features of each history stream (bench/emulator.py writes them): what those reads cost.
    history = {
        "user_features": ["u1", "u2", "u3", "watched"],
        "global_features": ["g1", "g2"],
        "history": {"user_feature": "watched", "stream_features": ["f1", "f2"]},
    }
    return {
        "simple": model(predict_simple),
        "ranked": model(predict_ranked, preprocess_ranked),
        "cpu": model(predict_cpu, loops=calibrate_loops(0.002)),
        "cpu4": model(predict_cpu, loops=calibrate_loops(0.004)),
        "mixed": model(predict_mixed, preprocess_mixed, heavy_loops=calibrate_loops(0.030)),
        "history": model(predict_simple, more=history),
        "memory": model(predict_memory, big_array=big_array, big_dict=big_dict),
    }


def time_predict_ms(model: Doc, streams: int = 30) -> float:
    """Return the fastest time of the model's predict on a request of `streams`, in ms.

    The user is a heavy one, so the mixed model reports its heavy requests' cost.
    """
    rows = [{"streamUrl": f"s{i}", "f1": 1.0, "f2": 2.0, "f3": 3.0} for i in range(streams)]
    user = {"userid": f"{HEAVY_USER_PREFIX}-probe"}
    model_input = model["preprocess"](user, rows, {}, model["params"])
    timings = []
    for _ in range(21):
        start = time.perf_counter()
        model["predict"](model_input, model["params"])
        timings.append(time.perf_counter() - start)
    return round(min(timings) * 1000, 3)


def write_models(out_dir: Path) -> None:
    """Pickle each model to OUT_DIR/NAME.pkl; print one JSON line describing them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    described = {}
    for name, model in build_models().items():
        pkl = out_dir / f"{name}.pkl"
        pkl.write_bytes(cloudpickle.dumps(model))
        described[name] = {
            "predict_ms_30_streams": time_predict_ms(model),
            "cpu_loops": model["params"].get("loops") or model["params"].get("heavy_loops"),
            "pickle_bytes": pkl.stat().st_size,
        }
    print(json.dumps(described), flush=True)


if __name__ == "__main__":
    write_models(Path(sys.argv[1]))
