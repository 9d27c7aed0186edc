#!/usr/bin/env python3
"""External baselines for an attnbench sweep, as rows of attnbench's own results schema.

Times what an ML engineer would use instead of attnbench's kernels, on exactly the inputs of
a sweep run with ``--export-inputs``, and scores each output against the f64 oracle rows that
the sweep exported beside them:

  numpy.ref      a plain numpy implementation (per head: scores, max, exp, sum, P V in f32)
  torch.sdpa     torch.nn.functional.scaled_dot_product_attention
  ort.mha        ONNX Runtime's fused CPU MultiHeadAttention contrib op (com.microsoft)
  ort.attention  ONNX Runtime running the standard opset-23 Attention op

Usage:
  attnbench sweep --variants full,flash --lengths 1024..8192 --export-inputs
  python baselines/run.py results/<run id>.json [--libs numpy,torch,ort]

writes results/<run id>-baselines.csv (the sweep's columns, one row per baseline and length,
run_id the sweep's, so `attnbench report` draws them beside the sweep's variants) and a
.json describing the libraries: versions, thread settings and what was measured about them.

Each library runs in its own subprocess per round, so that its thread settings
(OMP/MKL/OpenBLAS environment variables, torch.set_num_threads, ORT's intra-op pool) take
effect before import, and the rounds of the libraries interleave as the sweep's variants do.
A library that is not installed is skipped with a note. Only the standard library is needed
for this parent process; numpy is needed by every worker.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

LIBRARIES = {
    "numpy": ["numpy.ref"],
    "torch": ["torch.sdpa"],
    "ort": ["ort.mha", "ort.attention"],
}

INSTALL = {
    "numpy": "pip install numpy",
    "torch": "pip install torch",
    "ort": "pip install onnxruntime onnx",
}

# Two-sided 95% Student-t quantiles for 1..30 degrees of freedom (as the sweep's intervals).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df):
    if df <= len(T975):
        return T975[df - 1]
    # Cornish-Fisher expansion beyond the table (within 0.003 of the exact value at df = 31).
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df)


class Refused(Exception):
    """A run the baselines cannot reproduce, or a bad argument: one line for the user."""


# --------------------------------------------------------------------------------------------
# The worker: one library, one round, every length.
# --------------------------------------------------------------------------------------------

def rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def reset_peak_rss():
    """Resets the kernel's high-water mark of this process's RSS (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def numpy_bytes(q, k, v):
    """Bytes numpy.ref holds in a call: its inputs and output, one head's f32 scores and the
    boolean mask."""
    n_q, n_kv = q.shape[2], k.shape[2]
    return q.nbytes + k.nbytes + v.nbytes + q.nbytes + 5 * n_q * n_kv


def numpy_impl(np, q, k, v, causal):
    b_, h_, s_, d_ = q.shape
    group = h_ // k.shape[1]
    n_kv = k.shape[2]
    scale = np.float32(1.0 / math.sqrt(d_))
    # Bottom-right aligned causal mask, built once outside the timed call.
    masked = np.triu(np.ones((s_, n_kv), dtype=bool), k=1 + n_kv - s_) if causal else None

    def call():
        out = np.empty((b_, h_, s_, v.shape[3]), dtype=np.float32)
        for b in range(b_):
            for h in range(h_):
                s = (q[b, h] * scale) @ k[b, h // group].T
                if masked is not None:
                    np.copyto(s, -np.inf, where=masked)
                s -= s.max(axis=1, keepdims=True)
                np.exp(s, out=s)
                s /= s.sum(axis=1, keepdims=True)
                np.matmul(s, v[b, h // group], out=out[b, h])
        return out

    return call


def torch_impl(q, k, v, causal, threads):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    qt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))
    gqa = q.shape[1] != k.shape[1]

    def call():
        with torch.inference_mode():
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=gqa)

    return lambda: call().numpy()


def ort_session(model, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_mha_impl(np, q, k, v, causal, threads):
    from onnx import TensorProto, helper

    b_, h_, s_, d_ = q.shape
    group = h_ // k.shape[1]
    if group > 1:
        # MultiHeadAttention has no grouped KV heads: each KV head is repeated for its query
        # heads, outside the timed call.
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"],
                            domain="com.microsoft", num_heads=h_, unidirectional=int(causal))
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", "s", h_ * w])
              for name, w in (("q", d_), ("k", d_), ("v", v.shape[3]))]
    graph = helper.make_graph([node], "mha", inputs,
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23),
                                                    helper.make_opsetid("com.microsoft", 1)])
    sess = ort_session(model, threads)
    # [batch, heads, n, d] -> [batch, n, heads * d], the op's layout, outside the timed call.
    feeds = {name: np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(b_, x.shape[2], -1))
             for name, x in (("q", q), ("k", k), ("v", v))}

    def call():
        o = sess.run(None, feeds)[0]
        return o.reshape(b_, s_, h_, -1).transpose(0, 2, 1, 3)

    return call


def ort_attention_impl(q, k, v, causal, threads):
    from onnx import TensorProto, helper

    node = helper.make_node("Attention", ["q", "k", "v"], ["o"], is_causal=int(causal))
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                            ["b", x.shape[1], "s", x.shape[3]])
              for name, x in (("q", q), ("k", k), ("v", v))]
    graph = helper.make_graph([node], "attention", inputs,
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    sess = ort_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]),
                       threads)
    feeds = {"q": q, "k": k, "v": v}
    return lambda: sess.run(None, feeds)[0]


def build(np, variant, q, k, v, causal, threads):
    if variant == "numpy.ref":
        return numpy_impl(np, q, k, v, causal)
    if variant == "torch.sdpa":
        return torch_impl(q, k, v, causal, threads)
    if variant == "ort.mha":
        return ort_mha_impl(np, q, k, v, causal, threads)
    if variant == "ort.attention":
        return ort_attention_impl(q, k, v, causal, threads)
    raise Refused(f"unknown baseline {variant}")


def versions(library):
    import numpy as np

    out = {"numpy": np.__version__}
    if library == "numpy":
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            out["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
        except Exception:  # numpy's config layout is not an API.
            pass
    elif library == "torch":
        import torch

        out["torch"] = torch.__version__
        out["cpu capability"] = torch.backends.cpu.get_cpu_capability()
        out["threads"] = str(torch.get_num_threads())
    elif library == "ort":
        import onnx
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
        out["onnx"] = onnx.__version__
    return out


def errors(np, out, oracle, rows):
    """Relative Frobenius error, largest absolute error and mean row cosine of `out` on the
    oracle's rows, as the sweep computes them."""
    got = np.asarray(out, dtype=np.float64)[:, :, rows, :]
    diff = got - oracle
    ref_norm = np.linalg.norm(oracle)
    rel = np.linalg.norm(diff) / ref_norm if ref_norm > 0 else np.linalg.norm(diff)
    a = got.reshape(-1, got.shape[-1])
    r = oracle.reshape(-1, oracle.shape[-1])
    na, nr = np.linalg.norm(a, axis=1), np.linalg.norm(r, axis=1)
    cos = np.where((na > 0) & (nr > 0), (a * r).sum(axis=1) / np.maximum(na * nr, 1e-300),
                   np.where((na == 0) & (nr == 0), 1.0, 0.0))
    return {
        "err_dense_rel": float(rel),
        "err_dense_max_abs": float(np.abs(diff).max()),
        "err_dense_cosine": float(cos.mean()),
        "oracle_rows": int(len(rows)),
    }


def warm_up(call, most=5):
    """Calls until a call is no slower than 1.1 times the fastest before it (at least two
    calls, at most `most`). A fresh process is not warm after one call: ONNX Runtime's
    arena, measured here, takes two calls of a causal n = 8192 MultiHeadAttention to stop
    growing (11 s and 12 s, then 2.9 s a call)."""
    times = []
    while len(times) < most:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2 and times[-1] <= 1.1 * min(times[:-1]):
            return len(times)
    return len(times)


def worker(args):
    """Runs one library's variants for one round at every length; prints JSON."""
    import numpy as np

    meta = json.load(open(args.meta))
    settings = meta["settings"]
    threads = meta["threads"]
    inputs = os.path.join(os.path.dirname(os.path.abspath(args.meta)), meta["inputs_dir"])
    rounds = settings["rounds"]
    per_round_calls = max(1, math.ceil(settings["min_repeats"] / rounds))
    per_round_time = settings["min_time_s"] / rounds
    max_calls = max(1, settings["max_repeats"] // rounds)
    skip_after = json.loads(args.skip_after)
    result = {"versions": versions(args.library), "cells": []}
    lengths = [int(n) for n in args.lengths.split(",")]
    for n in lengths:
        d = os.path.join(inputs, f"n{n}")
        q, k, v = (np.load(os.path.join(d, f"{x}.npy")) for x in "qkv")
        first = args.round == 0
        if first and not args.memory:
            rows = np.load(os.path.join(d, "rows.npy"))
            oracle = np.load(os.path.join(d, "oracle.npy"))
        variants = [args.memory] if args.memory else LIBRARIES[args.library]
        for variant in variants:
            if variant in skip_after and n > skip_after[variant]:
                continue
            cell = {"variant": variant, "n": n}
            call = None
            need = numpy_bytes(q, k, v) if variant == "numpy.ref" else 0
            if need > settings["max_memory"]:
                cell["skipped"] = (f"needs ~{need >> 20} MB (one head's scores and "
                                   f"mask), over max_memory {settings['max_memory'] >> 20} MB")
                result["cells"].append(cell)
                continue
            try:
                call = build(np, variant, q, k, v, settings["causal"], threads)
                if args.memory:
                    # A fresh process, the operator built: the growth of the peak RSS over
                    # its first call is the memory the call needs (no allocator cache holds
                    # it yet), plus whatever the library initialises lazily on a first call.
                    if reset_peak_rss():
                        before = rss_bytes("VmRSS")
                        call()
                        cell["peak_rss_growth"] = max(0, rss_bytes("VmHWM") - before)
                    result["cells"].append(cell)
                    continue
                cell["warmup"] = warm_up(call)
                if first:
                    # One timed call for the time guard, then the errors.
                    t0 = time.perf_counter()
                    out = call()
                    cell["first_call_s"] = time.perf_counter() - t0
                    if cell["first_call_s"] > settings["max_seconds"]:
                        skip_after[variant] = n
                    cell.update(errors(np, out, oracle, rows))
                    del out
                times = []
                start = time.perf_counter()
                while len(times) < max_calls and (
                        len(times) < per_round_calls
                        or time.perf_counter() - start < per_round_time):
                    t0 = time.perf_counter_ns()
                    call()
                    times.append((time.perf_counter_ns() - t0) / 1e6)
                cell["times_ms"] = times
            except Exception as e:  # The library's own error, kept as the row's note.
                cell["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            result["cells"].append(cell)
            del call
    json.dump(result, sys.stdout)


# --------------------------------------------------------------------------------------------
# The parent: rounds over the libraries, then one row per cell.
# --------------------------------------------------------------------------------------------

def spawn(script, library, meta_path, round_, lengths, threads, skip_after, memory=None):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, script, "--worker", library, "--meta", meta_path,
           "--round", str(round_), "--lengths", ",".join(map(str, lengths)),
           "--skip-after", json.dumps(skip_after)]
    if memory:
        cmd += ["--memory", memory]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, tail
    return json.loads(p.stdout), None


def probe(library):
    """Whether `library` imports here, without importing it into this process."""
    module = {"numpy": "numpy", "torch": "torch", "ort": "onnxruntime"}[library]
    extra = "; import onnx" if library == "ort" else ""
    p = subprocess.run([sys.executable, "-c", f"import numpy; import {module}{extra}"],
                       capture_output=True, text=True)
    if p.returncode == 0:
        return None
    tail = (p.stderr.strip().splitlines() or ["import failed"])[-1]
    return f"{library} is not importable ({tail}); install with `{INSTALL[library]}`"


def interval(medians):
    if len(medians) < 2:
        return None, None
    logs = [math.log(m) for m in medians]
    mean = statistics.fmean(logs)
    half = t975(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean - half), math.exp(mean + half)


def fmt(x):
    if x is None:
        return ""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return repr(x)
    return str(x)


def shape_of(inputs_dir, n):
    """The shapes of a length's exported q, k and v, from their .npy headers (the parent
    process needs no numpy)."""
    shapes = {}
    for x in "qkv":
        with open(os.path.join(inputs_dir, f"n{n}", f"{x}.npy"), "rb") as f:
            head = f.read(10)
            if head[:6] != b"\x93NUMPY":
                raise Refused(f"{f.name} is not an .npy file")
            size = int.from_bytes(head[8:10], "little")
            header = f.read(size).decode("latin1")
        start = header.index("(", header.index("'shape'"))
        shapes[x] = tuple(int(t) for t in header[start + 1:header.index(")", start)]
                          .split(",") if t.strip())
    return shapes


def read_run(json_path):
    try:
        meta = json.load(open(json_path))
    except (OSError, ValueError) as e:
        raise Refused(f"{json_path}: {e}")
    if meta.get("kind") == "attnbench-baselines":
        raise Refused(f"{json_path} is a baselines file; give the sweep's JSON")
    settings = meta.get("settings")
    if not settings or "run_id" not in meta:
        raise Refused(f"{json_path} is not the JSON of an attnbench sweep")
    if not meta.get("inputs_dir"):
        raise Refused(f"{json_path}: the run has no exported inputs; sweep with --export-inputs")
    for key, why in (("modifiers", "score modifiers (ALiBi, soft-capping, RoPE)"),
                     ("n_q", "decoding queries (--n-q)"), ("d_model", "layer sweeps (--layer)")):
        if settings.get(key):
            raise Refused(f"{json_path}: the baselines do not reproduce {why}")
    if meta.get("state", "complete") != "complete":
        raise Refused(f"{json_path}: the run is {meta['state']}, not complete")
    return meta


def create_new(path, text):
    """Writes `path` only if it does not exist: via a temporary file linked into place, so a
    reader never sees half a file and an earlier file is never replaced."""
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".baselines-", suffix=".tmp")
    # mkstemp makes the file private; results are as readable as any file the user writes.
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def output_paths(meta, json_path, out):
    if out:
        if not out.endswith(".csv"):
            raise Refused(f"--out {out}: expected a path ending in .csv")
        stem = out[:-4]
    else:
        stem = os.path.join(os.path.dirname(json_path), f"{meta['run_id']}-baselines")
    for ext in (".csv", ".json"):
        if os.path.exists(stem + ext):
            raise Refused(f"{stem + ext} exists; earlier results are never replaced (use --out)")
    return stem + ".csv", stem + ".json"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", help="the sweep's JSON (results/<run id>.json)")
    ap.add_argument("--libs", default="numpy,torch,ort",
                    help="comma-separated: numpy, torch, ort (default: all three)")
    ap.add_argument("--out", help="the CSV to write (default: beside the sweep's, "
                                  "<run id>-baselines.csv); its .json goes beside it")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--meta", help=argparse.SUPPRESS)
    ap.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--lengths", help=argparse.SUPPRESS)
    ap.add_argument("--skip-after", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--memory", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.library = args.worker
        worker(args)
        return 0
    if not args.json:
        ap.error("the sweep's JSON is required")
    try:
        return run(args)
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args):
    libs = [x.strip() for x in args.libs.split(",") if x.strip()]
    unknown = [x for x in libs if x not in LIBRARIES]
    if unknown or not libs:
        raise Refused(f"--libs: unknown {', '.join(unknown) or '(none)'}; "
                      f"choose from {', '.join(LIBRARIES)}")
    meta = read_run(args.json)
    csv_path, json_path = output_paths(meta, args.json, args.out)
    settings, threads = meta["settings"], meta["threads"]
    inputs_dir = os.path.join(os.path.dirname(os.path.abspath(args.json)), meta["inputs_dir"])
    if not os.path.isdir(inputs_dir):
        raise Refused(f"{inputs_dir}: the run's exported inputs are missing")
    source_csv = os.path.splitext(args.json)[0] + ".csv"
    try:
        with open(source_csv) as f:
            columns = f.readline().strip().split(",")
    except OSError as e:
        raise Refused(f"{source_csv}: {e}")
    lengths = [n for n in meta["lengths"] if os.path.isdir(os.path.join(inputs_dir, f"n{n}"))]
    if not lengths:
        raise Refused(f"{inputs_dir} holds no length of the run")
    script = os.path.abspath(__file__)
    started = time.time()
    skipped, available = [], []
    for lib in libs:
        why = probe(lib)
        if why:
            skipped.append({"library": lib, "reason": why})
            print(f"skipped: {why}", file=sys.stderr)
        else:
            available.append(lib)
    cells, lib_versions, failures = {}, {}, {}
    skip_after = {}
    rounds = settings["rounds"]
    for round_ in range(rounds):
        order = lengths if round_ % 2 == 0 else lengths[::-1]
        # The libraries in an order rotated each round, as the sweep rotates its variants.
        for i in range(len(available)):
            lib = available[(i + round_) % len(available)]
            print(f"round {round_ + 1}/{rounds}: {lib}", file=sys.stderr)
            out, err = spawn(script, lib, os.path.abspath(args.json), round_, order, threads,
                             skip_after)
            if out is None:
                failures.setdefault(lib, err)
                continue
            lib_versions[lib] = out["versions"]
            for c in out["cells"]:
                key = (c["variant"], c["n"])
                cell = cells.setdefault(key, {"rounds": []})
                if "error" in c or "skipped" in c:
                    cell.update(c)
                    continue
                if round_ == 0:
                    cell.update({k: v for k, v in c.items() if k != "times_ms"})
                    # The sweep's time guard: a call over max_seconds skips longer lengths.
                    if c["first_call_s"] > settings["max_seconds"]:
                        skip_after[c["variant"]] = min(skip_after.get(c["variant"], c["n"]),
                                                       c["n"])
                cell["rounds"].append(c["times_ms"])
                cell["warmup"] = max(cell.get("warmup", 0), c.get("warmup", 0))
    # Peak memory: each (variant, length) once more, in a process of its own.
    for lib in available:
        if lib in failures:
            continue
        for variant in LIBRARIES[lib]:
            for n in lengths:
                cell = cells.get((variant, n))
                if not cell or "error" in cell or "skipped" in cell:
                    continue
                print(f"peak memory: {variant} at n = {n}", file=sys.stderr)
                out, err = spawn(script, lib, os.path.abspath(args.json), 0, [n], threads, {},
                                 memory=variant)
                if out is None:
                    cell["memory_error"] = err
                elif out["cells"] and "peak_rss_growth" in out["cells"][0]:
                    cell["peak_rss_growth"] = out["cells"][0]["peak_rss_growth"]
    rows = []
    for lib in libs:
        for variant in LIBRARIES[lib]:
            for n in lengths:
                shape = shape_of(inputs_dir, n)
                rows.append(row(meta, variant, n, shape, cells.get((variant, n)), lib,
                                skipped, failures, skip_after))
    notes = library_notes(available, rows, lib_versions)
    text = ",".join(columns) + "\n"
    for r in rows:
        missing = [c for c in r if c not in columns]
        if missing:
            raise Refused(f"{source_csv} lacks the columns {missing}: a run of another version")
        text += ",".join(csv_field(fmt(r.get(c))) for c in columns) + "\n"
    create_new(csv_path, text)
    doc = {
        "kind": "attnbench-baselines",
        "run_id": meta["run_id"],
        "source": os.path.basename(args.json),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 3),
        "command_line": [os.path.basename(sys.executable)] + sys.argv,
        "python": platform.python_version(),
        "threads": threads,
        "libraries": [
            {"name": lib, "variants": LIBRARIES[lib],
             "versions": [f"{k} {v}" for k, v in lib_versions.get(lib, {}).items()],
             "notes": notes.get(lib, [])}
            for lib in available
        ],
        "skipped": [s["reason"] for s in skipped]
                   + [f"{lib} failed: {err}" for lib, err in failures.items()],
    }
    create_new(json_path, json.dumps(doc, indent=2) + "\n")
    print(csv_path)
    return 0


def csv_field(s):
    if any(c in s for c in ",\"\n\r"):
        return '"' + s.replace('"', '""') + '"'
    return s


def row(meta, variant, n, shape, cell, lib, skipped, failures, skip_after):
    settings = meta["settings"]
    b, h, n_q, d = shape["q"]
    h_kv, n_kv, d_v = shape["k"][1], shape["k"][2], shape["v"][3]
    causal = settings["causal"]
    # Pairs the mask allows: bottom-right aligned causal, as the sweep.
    allowed = sum(min(n_kv, max(0, i + 1 + n_kv - n_q)) for i in range(n_q)) if causal \
        else n_q * n_kv
    density = allowed / (n_q * n_kv)
    useful = 2.0 * b * h * allowed * (d + d_v)
    r = {
        "run_id": meta["run_id"], "variant": variant, "name": variant, "fidelity": "exact",
        "batch": b, "heads": h, "kv_heads": h_kv, "n_q": n_q, "n_kv": n_kv, "head_dim": d,
        "causal": causal, "threads": meta["threads"], "workload": meta["workload"],
        "useful_flops": useful, "density": density, "modifiers": "", "status": "skipped",
        "round_medians_ms": "", "err_by_input": "", "note": "",
    }
    if variant == "numpy.ref":
        # It computes every score and masks afterwards.
        r["executed_flops"] = 2.0 * b * h * n_q * n_kv * (d + d_v)
    if lib in [s["library"] for s in skipped]:
        r["note"] = next(s["reason"] for s in skipped if s["library"] == lib)
        return r
    if cell is None:
        if lib in failures:
            r["status"], r["note"] = "error", f"{lib} worker failed: {failures[lib]}"
        elif variant in skip_after:
            r["note"] = (f"a call at n = {skip_after[variant]} took over max_seconds = "
                         f"{settings['max_seconds']} s")
        else:
            r["status"], r["note"] = "error", "no measurement"
        return r
    if "skipped" in cell:
        r["note"] = cell["skipped"]
        return r
    if "error" in cell:
        r["status"], r["note"] = "error", cell["error"]
        return r
    times = [t for rnd in cell["rounds"] for t in rnd]
    medians = [statistics.median(rnd) for rnd in cell["rounds"]]
    med = statistics.median(times)
    lo, hi = interval(medians)
    r.update({
        "status": "ok", "time_median_ms": med, "time_min_ms": min(times),
        "time_max_ms": max(times), "repeats": len(times), "rounds": len(medians),
        "round_medians_ms": ";".join(repr(m) for m in medians),
        "time_ci_lo_ms": lo, "time_ci_hi_ms": hi,
        "useful_gflops": useful / (med * 1e6),
        "err_dense_rel": cell["err_dense_rel"], "err_dense_max_abs": cell["err_dense_max_abs"],
        "err_dense_cosine": cell["err_dense_cosine"], "err_own_rel": cell["err_dense_rel"],
        "err_own_max_abs": cell["err_dense_max_abs"], "oracle_rows": cell["oracle_rows"],
        "note": "peak_bytes: growth of the peak RSS over the first call in a fresh process "
                "(output and lazy initialisation included)",
    })
    if "executed_flops" in r:
        r["executed_gflops"] = r["executed_flops"] / (med * 1e6)
    if "peak_rss_growth" in cell:
        r["peak_bytes"] = cell["peak_rss_growth"]
    elif "memory_error" in cell:
        r["note"] = f"peak memory not measured: {cell['memory_error']}"
    else:
        r["note"] = "peak RSS not measurable here (/proc/self/clear_refs)"
    if cell.get("warmup", 0) > 2:
        r["note"] += f"; up to {cell['warmup']} warm-up calls per process before timing"
    if len(medians) < settings["rounds"]:
        r["note"] += f"; timed in {len(medians)} of {settings['rounds']} rounds"
    return r


def library_notes(available, rows, lib_versions):
    """What was measured about each library that a reader choosing between them should know:
    whether its peak memory shows the n x n score matrix, and its thread setting."""
    notes = {}
    for lib in available:
        out = []
        for variant in LIBRARIES[lib]:
            ok = [r for r in rows if r["variant"] == variant and r["status"] == "ok"
                  and r.get("peak_bytes") is not None]
            if not ok:
                continue
            top = max(ok, key=lambda r: r["n_kv"])
            scores = 4 * top["batch"] * top["heads"] * top["n_q"] * top["n_kv"]
            one_head = 4 * top["n_q"] * top["n_kv"]
            grew = top["peak_bytes"]
            if scores < 64 * 2**20:
                # A first call's lazy initialisation (thread pools, scratch) is MiBs too.
                what = "too small a problem to tell whether it materialises the scores"
            elif grew >= 0.5 * scores:
                what = "materialises every head's n x n score matrix"
            elif grew >= 0.5 * one_head:
                what = "materialises one head's n x n scores at a time"
            else:
                what = "does not materialise the score matrix"
            out.append(f"{variant}: {what} (peak RSS grew {grew / 2**20:.0f} MiB over a first "
                       f"call at n = {top['n_kv']}; all heads' f32 scores are "
                       f"{scores / 2**20:.0f} MiB)")
        if lib == "ort":
            out.append("ort.mha gets grouped KV heads repeated to every query head (outside "
                       "the timed call): the op has no grouped-query form")
        if lib == "torch":
            cap = lib_versions.get(lib, {}).get("cpu capability")
            if cap:
                out.append(f"torch dispatches its CPU kernels at {cap}")
        notes[lib] = out
    return notes


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
