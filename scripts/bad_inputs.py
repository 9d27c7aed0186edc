#!/usr/bin/env python3
"""A bad-input run against the attnbench binary: malformed and extreme variant specs, `.npy`
files, results CSVs and command-line flags, as a careless user or a hostile file would supply
them. Every case runs in a scratch directory under a deadline and a virtual-memory limit and
is classified by how it ended:

  clear   a non-zero exit with an `error:` line (or, for `check`, a FAIL/skip table and exit 1)
  ok      exit 0 (for a case that must fail: `silent`)
  panic   "panicked" on stderr
  abort   killed by a signal (SIGABRT on a failed allocation, SIGSEGV, ...)
  hang    still running at the deadline
  unclear a non-zero exit without an `error:` line

Usage: scripts/bad_inputs.py [BINARY] [--json OUT] [--no-spec-sweeps]   (BINARY: target/release/attnbench)
Needs only the Python standard library. Prints a table of classes by outcome.
"""

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 30
VMEM_KB = 8 * 1024 * 1024
TINY = ["--lengths", "16", "--heads", "1", "--head-dim", "8", "--rounds", "1",
        "--repeats", "1", "--min-time", "0", "--max-seconds", "5"]


def run(binary, args, cwd, pre=""):
    """Runs the binary; returns (outcome, seconds, last stderr line)."""
    script = f"ulimit -v {VMEM_KB}; {pre} exec \"$0\" \"$@\""
    start = time.time()
    try:
        p = subprocess.run(["sh", "-c", script, binary] + args, cwd=cwd,
                           capture_output=True, text=True, errors="replace",
                           timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        return "hang", time.time() - start, ""
    dt = time.time() - start
    err = p.stderr.strip().splitlines()
    last = err[-1][:160] if err else ""
    if "panicked" in p.stderr:
        return "panic", dt, last
    if p.returncode < 0 or p.returncode >= 128:
        return "abort", dt, last
    if p.returncode == 0:
        return "ok", dt, last
    if any(line.startswith("error:") for line in err) or "FAIL" in p.stdout:
        return "clear", dt, last
    return "unclear", dt, last


def npy_bytes(header, data=b"", version=(1, 0)):
    h = header.encode("latin-1")
    if version[0] == 1:
        length = struct.pack("<H", len(h))
    else:
        length = struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes(version) + length + h + data


def good_npy(shape=(2, 16, 8), descr="<f4", rng=random.Random(0)):
    n = 1
    for s in shape:
        n *= s
    dims = ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "")
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    width = 4 if descr.endswith("4") else 2
    fmt = "<%df" % n if width == 4 else None
    if width == 4:
        data = struct.pack(fmt, *[rng.uniform(-1, 1) for _ in range(n)])
    else:
        data = b"\x00\x3c" * n
    return npy_bytes(header, data)


def spec_cases(rng):
    names = ["full", "flash", "window", "sinks", "linear", "topk", "blocktopk", "longformer",
             "bigbird", "strided", "fixed", "dilated", "local", "lsh", "nystrom", "linformer",
             "retention", "nope", ""]
    values = ["0", "-1", "1e308", "nan", "inf", "18446744073709551616", "1099511627776",
              "3.5", "x", "", "{}", "{1,2", "{0,1}", "100000000", "favor", "elu1", "none",
              "true", "'a'", "9" * 400]
    params = ["w", "s", "k", "m", "g", "r", "block", "bq", "bk", "phi", "stride", "c",
              "dilation", "local", "landmarks", "proj", "rounds", "buckets", "seed", "decay",
              "chunk", "orthogonal", "zz"]
    out = []
    for _ in range(330):
        n = rng.choice(names)
        ps = [f"{rng.choice(params)}={rng.choice(values)}" for _ in range(rng.randint(0, 3))]
        spec = f"{n}({','.join(ps)})" if ps or rng.random() < 0.3 else n
        if rng.random() < 0.1:
            spec = spec[: rng.randint(0, len(spec))]
        if rng.random() < 0.05:
            spec += "\x1b[31m"
        out.append(spec)
    out += ["x" * 100_000, "full,", ",full", "full,,flash", "(", ")", "full(", "full()",
            "window(w=1,w=2)", "window(w=4", "linear(phi=favor,m=100000000)"]
    return out


def npy_cases(rng):
    """(name, bytes of x_q.npy or None for a special file, must_fail)."""
    good = good_npy()
    cases = []
    headers = [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 16, 8), 'x': \"'descr': '<f2'\"}",
        "'descr': '<f4', 'fortran_order': False, 'shape': (2, 16, 8)",
        "{'descr': '<f4', 'fortran_order': False}",
        "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 16, 8)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 16, 8)} trailing",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (256)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 16, 8]}",
        "{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 16, 8)}",
        "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 16, 8)}",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 16, 8)}",
        "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 16, 8)}",
        "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 16, 8)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 16, 8)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 16.0, 8)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 9999999)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 16, 8)",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 16, 8),,}",
        "{'descr': '<f4\n', 'fortran_order': False, 'shape': (2, 16, 8)}",
        "{descr: '<f4', 'fortran_order': False, 'shape': (2, 16, 8)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': ()}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (256,)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 2, 16, 8)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0, 8)}",
        "(" * 200 + ")" * 200,
        "{" + "'a': 1, " * 2000 + "}",
        "",
    ]
    for h in headers:
        cases.append(("header:" + h[:40], npy_bytes(h, good[128:]), True))
    cases.append(("v1.1", good[:7] + b"\x01" + good[8:], True))
    cases.append(("v9", good[:6] + b"\x09" + good[7:], True))
    cases.append(("v2 huge header len", good[:6] + b"\x02\x00" + struct.pack("<I", 2**31) + good[10:], True))
    cases.append(("empty", b"", True))
    cases.append(("magic only", b"\x93NUMPY", True))
    cases.append(("truncated data", good[:-5], True))
    cases.append(("extra data", good + b"\x00" * 4, True))
    cases.append(("nan data", good[:-4] + struct.pack("<f", float("nan")), True))
    cases.append(("inf data", good[:-4] + struct.pack("<f", float("inf")), True))
    cases.append(("3e38 data", good[:128] + struct.pack("<f", 3e38) * 256, True))
    cases.append(("f16 file", good_npy(descr="<f2"), False))
    for i in range(110):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(0, 128)
            b[at] = rng.randrange(256)
        if rng.random() < 0.3:
            b = b[: rng.randrange(len(b))]
        cases.append((f"mutated {i}", bytes(b), False))
    cases.append(("fifo", "fifo", True))
    cases.append(("/dev/zero", "/dev/zero", True))
    cases.append(("dangling symlink", "dangling", True))
    cases.append(("directory", "dir", True))
    return cases


def csv_cases(rng):
    src = os.path.join(ROOT, "results", "20261202T011523Z-minilm.csv")
    lines = open(src).read().splitlines()[:5]
    header = lines[0].split(",")
    numeric = ["time_median_ms", "time_min_ms", "time_max_ms", "n_kv", "n_q", "heads",
               "batch", "head_dim", "threads", "err_dense_rel", "peak_bytes",
               "workspace_bytes", "density", "useful_gflops", "round_medians_ms",
               "err_dense_cosine", "dropped_mass", "pct_of_gemm"]
    bad_values = ["NaN", "-1", "0", "1e307", "1e308", "inf", "-inf", "", "x", "1e400"]
    cases = []
    for col in numeric:
        for v in bad_values:
            i = header.index(col)
            rows = [l.split(",") for l in lines[1:]]
            # Quoted fields hold commas: edit only rows that split cleanly into the header.
            rows = [r for r in rows if len(r) == len(header)] or rows
            rows[0][i] = v
            text = lines[0] + "\n" + "\n".join(",".join(r) for r in rows) + "\n"
            sizes = ("n_kv", "n_q", "heads", "batch", "head_dim", "threads")
            closed_at_zero = ("peak_bytes", "workspace_bytes", "useful_gflops", "pct_of_gemm",
                              "err_dense_rel", "err_dense_cosine", "dropped_mass", "density")
            # Valid: an empty optional measurement, a zero where zero is physical, a cosine
            # of -1.
            valid = (v == "" and col not in sizes) or (v == "0" and col in closed_at_zero) \
                or (v == "-1" and col == "err_dense_cosine")
            cases.append((f"{col}={v}", text, not valid))
    for name, text in [
        ("variant with | and html", lines[0] + "\n" + lines[1].replace(",full,", ",a|b<script>,", 1) + "\n"),
        ("header only", lines[0] + "\n"),
        ("empty", ""),
        ("cut mid-row", "\n".join(lines)[: len("\n".join(lines)) - 40]),
        ("binary", "\x00\x01\x02" * 100),
        ("wrong columns", "a,b,c\n1,2,3\n"),
    ]:
        must_fail = name in ("header only", "empty", "binary", "wrong columns")
        cases.append((name, text, must_fail))
    for i in range(40):
        b = bytearray("\n".join(lines).encode() + b"\n")
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(32, 127)
        cases.append((f"mutated {i}", b.decode("latin-1"), False))
    return cases


def flag_cases():
    sweep = ["sweep", "--variants", "full"] + TINY
    cases = []
    for flag, values in [
        ("--threads", ["0", "1000", "18446744073709551615", "-1", "x"]),
        ("--lengths", ["0", "-1", "8192..256", "16,0", "1e3", "", ",", "99999999999999999999", "4294967296"]),
        ("--heads", ["0", "3", "99999999999"]),
        ("--kv-heads", ["0", "3", "2"]),
        ("--head-dim", ["0", "100000000"]),
        ("--batch", ["0", "1000000000"]),
        ("--rounds", ["0", "1000000000000"]),
        ("--repeats", ["0", "-1"]),
        ("--min-time", ["1e20", "-1", "nan", "inf"]),
        ("--max-seconds", ["0", "-1", "nan", "1e308"]),
        ("--max-memory", ["0", "1X", "-1", "99999999999G"]),
        ("--softcap", ["0", "-1", "nan", "inf"]),
        ("--rope", ["0", "-1", "nan"]),
        ("--n-q", ["0", "17", "99999"]),
        ("--oracle-rows", ["0", "1", "x"]),
        ("--error-seeds", ["0"]),
        ("--workload", ["gaussian(scale=0)", "gaussian(scale=-1)", "gaussian(scale=nan)",
                        "gaussian(scale=1e20)", "gaussian(scale=1e300)", "npy:/nonexistent",
                        "structured(layer=99)", "wat", "npy:"]),
        ("--seed", ["-1", "18446744073709551616"]),
        ("--label", ["../../x", "a/b", "\x1b[31m", "x" * 5000]),
        ("--d-model", ["0", "65536", "7"]),
    ]:
        for v in values:
            args = list(sweep) + [flag, v]
            if flag == "--d-model":
                args += ["--layer", "--max-memory", "1G"]
            # A few are valid and simply run (e.g. --kv-heads 1 of --heads 1): not must-fail.
            must_fail = not (flag in ("--label", "--seed") and v in ("a/b", "../../x", "\x1b[31m", "x" * 5000)) \
                and not (flag == "--max-seconds" and v == "1e308") \
                and not (flag == "--kv-heads" and v == "2") \
                and not (flag == "--n-q" and v == "17")
            cases.append((f"sweep {flag} {v[:20]}", args, must_fail))
    maps = ["maps", "--workload", f"npy:{os.path.join(ROOT, 'tests/data/qkv')}"]
    for args in [["--n", "0"], ["--n", "100000"], ["--heads", "0,0"], ["--heads", "99"],
                 ["--variants", "full"], ["--variants", "window(w=4),window(w=4)"],
                 ["--variants", "linear(phi=favor,m=100000000)", "--n", "16"],
                 ["--max-memory", "1K"]]:
        cases.append(("maps " + " ".join(args)[:30], maps + args, True))
    cases.append(("maps gaussian n=100000", ["maps", "--workload", "gaussian", "--n", "100000"], True))
    for args in [["--contexts", "0"], ["--tokens", "0"], ["--stores", "f64"], ["--threads", "1000"],
                 ["--cell-seconds", "-1"], ["--max-memory", "1K"], ["--contexts", "99999999999"]]:
        cases.append(("decode " + " ".join(args), ["decode", "--quick", "--variants", "flash"] + args, True))
    for args in [["--variants", "linear(phi=favor,m=100000000)"], ["--variants", "longformer(g=1099511627776)"],
                 ["--variants", "nope"], ["--max-memory", "1K"]]:
        cases.append(("check " + " ".join(args)[:40], ["check"] + args, True))
    return cases


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--")
                             else os.path.join(ROOT, "target", "release", "attnbench"))
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    rng = random.Random(20)
    work = tempfile.mkdtemp(prefix="attnbench-bad-")
    results = []  # (class, name, must_fail, outcome, seconds, last)

    def record(cls, name, must_fail, outcome):
        kind, dt, last = outcome
        if kind == "ok" and must_fail:
            kind = "silent"
        results.append((cls, name, must_fail, kind, dt, last))

    # Valid specs run a real (tiny) sweep, seconds each: `--no-spec-sweeps` checks them
    # through `check` alone (the same parser).
    commands = [["check"]]
    if "--no-spec-sweeps" not in sys.argv:
        commands.insert(0, ["sweep", "--quick", "--out", "o"] + TINY)
    for i, spec in enumerate(spec_cases(rng)):
        for cmd in commands:
            args = [cmd[0], "--variants", spec] + cmd[1:]
            record("spec (" + cmd[0] + ")", spec[:40], False, run(binary, args, work))

    for name, data, must_fail in npy_cases(rng):
        d = tempfile.mkdtemp(dir=work)
        target = os.path.join(d, "x_q.npy")
        if data == "fifo":
            os.mkfifo(target)
        elif data == "/dev/zero":
            os.symlink("/dev/zero", target)
        elif data == "dangling":
            os.symlink(os.path.join(d, "nowhere"), target)
        elif data == "dir":
            os.mkdir(target)
        else:
            open(target, "wb").write(data)
        for role in "kv":
            open(os.path.join(d, f"x_{role}.npy"), "wb").write(good_npy())
        args = ["sweep", "--variants", "full", "--workload", f"npy:{d}", "--quick", "--out", "o",
                "--lengths", "16"]
        record("npy (sweep)", name, must_fail, run(binary, args, work))
        record("npy (maps)", name, must_fail,
               run(binary, ["maps", "--workload", f"npy:{d}", "--n", "16", "--out", os.path.join(d, "m")], work))

    for name, text, must_fail in csv_cases(rng):
        d = tempfile.mkdtemp(dir=work)
        path = os.path.join(d, "r.csv")
        open(path, "w", encoding="latin-1").write(text)
        record("results CSV (report)", name, must_fail,
               run(binary, ["report", path, "--out", os.path.join(d, "rep")], work))

    for name, args, must_fail in flag_cases():
        record("flags", name, must_fail, run(binary, args + (["--out", "o"] if args[0] == "sweep" else []), work))

    # Signals and a full disk: the CSV must stay readable.
    d = tempfile.mkdtemp(dir=work)
    record("full disk", "ulimit -f 4", True,
           run(binary, ["sweep", "--variants", "full,flash", "--lengths", "64..2048", "--heads", "1",
                        "--head-dim", "8", "--quick", "--out", d], work, pre="ulimit -f 4;"))
    shutil.rmtree(work, ignore_errors=True)

    table = defaultdict(Counter)
    for cls, _, _, kind, _, _ in results:
        table[cls][kind] += 1
    kinds = ["clear", "ok", "silent", "unclear", "panic", "abort", "hang"]
    print("| class | cases | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    total = Counter()
    for cls in sorted(table):
        c = table[cls]
        total.update(c)
        print(f"| {cls} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in kinds) + " |")
    print(f"| all | {sum(total.values())} | " + " | ".join(str(total[k]) for k in kinds) + " |")
    bad = [r for r in results if r[3] in ("silent", "unclear", "panic", "abort", "hang")]
    for cls, name, _, kind, dt, last in bad[:60]:
        print(f"{kind:7} {cls:22} {name!r:45.45} {dt:5.1f}s  {last}")
    if out_json:
        json.dump([dict(zip(["class", "name", "must_fail", "outcome", "seconds", "last"], r))
                   for r in results], open(out_json, "w"), indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
