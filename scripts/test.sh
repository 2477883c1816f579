#!/usr/bin/env bash
# The test command of the README (also run by CI): static checks, then the test suite.
# Fails on any finding, any failed test, and when pytest collects no tests (exit code 5).
# Skipped tests are listed at the end with their reasons (e.g. no SLURM cluster), so a skip
# is never mistaken for a pass. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
status=0

echo "== snakemake --lint"
lint_out=$(snakemake --lint 2>&1); lint_rc=$?
echo "$lint_out" | tail -n 40
if [ $lint_rc -ne 0 ] || echo "$lint_out" | grep -qi "lints for"; then
  echo "FAIL: snakemake --lint reported findings" >&2; status=1
fi

echo "== snakefmt --check"
snakefmt --check Snakefile workflow/rules || { echo "FAIL: snakefmt" >&2; status=1; }

echo "== ruff"
ruff check src tests workflow/scripts benchmarks tools scripts notebooks || { echo "FAIL: ruff check" >&2; status=1; }
ruff format --check src tests workflow/scripts benchmarks tools scripts notebooks || { echo "FAIL: ruff format" >&2; status=1; }

echo "== notebooks are stripped"
python tools/strip_notebooks.py --check notebooks/*.ipynb || { echo "FAIL: notebook outputs committed" >&2; status=1; }

echo "== pytest"
log=$(mktemp)
# --durations: the slowest tests, to keep the suite under its 30-minute budget on 2 cores
pytest -ra --durations=20 "$@" 2>&1 | tee "$log"; rc=${PIPESTATUS[0]}
if [ $rc -eq 5 ]; then
  echo "FAIL: pytest collected no tests (exit code 5)" >&2; status=1
elif [ $rc -ne 0 ]; then
  echo "FAIL: pytest exit code $rc" >&2; status=1
fi
skipped=$(grep -E '^SKIPPED' "$log" || true)
if [ -n "$skipped" ]; then
  echo "== NOTE: $(grep -cE '^SKIPPED' "$log") skip line(s); these tests did NOT run:"
  echo "$skipped"
fi
rm -f "$log"
[ $status -eq 0 ] && echo "== all checks passed" || echo "== FAILED (see above)" >&2
exit $status
