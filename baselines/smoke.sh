#!/usr/bin/env bash
# CI smoke test of the external baselines: a small sweep with exported inputs, the baseline
# script with numpy alone (torch and ONNX Runtime are skipped with a note when absent), and
# the merged report. Checks the schema (the report reads the rows), the numpy reference's
# error against the oracle, and that a missing library is reported rather than fatal.
#
#   baselines/smoke.sh PYTHON   (a Python with numpy, e.g. a venv's bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:?usage: baselines/smoke.sh PYTHON}
out=$(mktemp -d "${TMPDIR:-/tmp}/attnbench-baselines-XXXXXX")
trap 'rm -rf "$out"' EXIT
bin=target/release/attnbench
cargo build --release --quiet
"$bin" sweep --variants full,flash --lengths 128,256 --heads 4 --kv-heads 2 --causal \
  --rounds 2 --export-inputs --out "$out" >/dev/null
json=$(ls "$out"/*-sweep.json)
csv=${json%.json}.csv
"$python" baselines/run.py "$json" --libs numpy,torch,ort
base=${json%.json}-baselines.csv
# The numpy reference: measured at both lengths, its error against the f64 oracle at f32 level.
"$python" - "$base" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
ref = [r for r in rows if r["variant"] == "numpy.ref"]
assert len(ref) == 2 and all(r["status"] == "ok" for r in ref), ref
for r in ref:
    err = float(r["err_dense_rel"])
    assert 1e-9 < err < 1e-5, f"numpy.ref error {err} at n = {r['n_kv']}"
    assert float(r["time_ci_lo_ms"]) <= float(r["time_median_ms"]) * 1.5
print("numpy.ref errors:", [r["err_dense_rel"] for r in ref])
PY
# Running it again must not replace the first run's files.
if "$python" baselines/run.py "$json" --libs numpy 2>/dev/null; then
  echo "a second baselines run replaced the first" >&2
  exit 1
fi
"$bin" report "$csv" "$base" --out "$out/report" >/dev/null
grep -q "## External baselines" "$out/report/report.md"
grep -q '`numpy.ref`' "$out/report/report.md"
echo "baselines smoke test passed"
