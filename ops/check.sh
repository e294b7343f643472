#!/usr/bin/env bash
# Checks the ops assets (run by .ci/run; needs promtool and python3):
#   1. promtool check rules   ops/prometheus/*.yml  (syntax, PromQL, templates)
#   2. promtool test rules    ops/tests/*.yml       (a unit test for every alert)
#   3. the dashboard: well-formed JSON, unique panel ids, every panel on the DS_PROMETHEUS
#      datasource, and every PromQL expression in it parses (written with the Grafana variables
#      filled in to a throwaway rules file, put through `promtool check rules`);
#   4. every tower_5xx_* metric the rules, tests and dashboard name is in src/metrics.rs's table,
#      with labels it has and, where the table lists them, label values it has (promtool cannot
#      see a misspelt name or value: the expression is valid and matches nothing).
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in promtool python3; do
    command -v "$tool" >/dev/null || { echo "ops/check.sh: $tool is missing" >&2; exit 1; }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "-- promtool check rules"
promtool check rules ops/prometheus/*.yml

echo "-- promtool test rules"
promtool test rules ops/tests/*.yml

echo "-- dashboard and metric names"
python3 -m json.tool ops/grafana/tower-5xx.json >/dev/null
python3 - "$tmp/dashboard.rules.json" <<'PY'
import json, re, sys

out = sys.argv[1]
errors = []

# The metrics table of src/metrics.rs: | `name` | type | labels | meaning |
table = {}
for line in open("src/metrics.rs", encoding="utf-8"):
    m = re.match(r"^//! \| `(tower_5xx_\w+)` \| (\w+) \|\s*(.*?)\s*\| (.*) \|$", line.rstrip("\n"))
    if not m:
        continue
    name, kind, labels_col, meaning = m.groups()
    labels = {}
    for lm in re.finditer(r"`([\w.]+)`(?: \(([^)]*)\))?", labels_col):
        key, values = lm.group(1), lm.group(2)
        vals = set(re.findall(r"`(\w+)`", values or "")) or None
        if vals is None:
            # The values may be listed in the meaning: "`error.type` is the ...: `a`, `b`".
            mm = re.search(r"`" + re.escape(key) + r"` is [^:]*:(.*)", meaning)
            if mm:
                vals = set(re.findall(r"`(\w+)`", mm.group(1))) or None
        labels[key.replace(".", "_")] = vals
    table[name] = (kind, labels)
if len(table) < 10:
    sys.exit(f"ops/check.sh: found only {len(table)} metrics in src/metrics.rs's table; has its format changed?")

COMMON = {"job", "instance", "name"}

def base(metric):
    """The table's name for an exported series name, and the extra labels that series has."""
    if metric in table:
        kind = table[metric][0]
        return metric, {"quantile"} if kind == "histogram" else set()
    for suffix, extra in (("_bucket", {"le"}), ("_sum", set()), ("_count", set())):
        if metric.endswith(suffix) and table.get(metric[: -len(suffix)], ("",))[0] == "histogram":
            return metric[: -len(suffix)], extra
    return None, None

def check_expr(where, expr):
    # Metric names (not a part of a recording rule's name such as job:tower_5xx_failures:rate5m).
    for m in re.finditer(r"(?<![\w:])(tower_5xx_\w+)(?![\w:])(\{[^}]*\})?", expr):
        metric, selector = m.group(1), m.group(2) or ""
        name, extra = base(metric)
        if name is None:
            errors.append(f"{where}: {metric} is not in src/metrics.rs")
            continue
        labels = table[name][1]
        for lm in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', selector):
            key, op, value = lm.groups()
            if key in COMMON or key in extra:
                continue
            if key not in labels:
                errors.append(f"{where}: {metric} has no label {key}")
                continue
            allowed = labels[key]
            if allowed is None:
                continue
            for alt in value.split("|") if "~" in op else [value]:
                if re.fullmatch(r"\w+", alt) and alt not in allowed:
                    errors.append(f"{where}: {metric}{{{key}}} has no value {alt!r} (has {sorted(allowed)})")

# Rules and tests: every metric name, label and value they use.
import glob
for path in sorted(glob.glob("ops/prometheus/*.yml") + glob.glob("ops/tests/*.yml")):
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        if not line.lstrip().startswith("#"):
            check_expr(f"{path}:{n}", line)

# The dashboard.
dash = json.load(open("ops/grafana/tower-5xx.json", encoding="utf-8"))
VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "job": ".*", "name": ".*"}

def substitute(where, text):
    def one(m):
        var = m.group(1) or m.group(2)
        if var not in VARS:
            errors.append(f"{where}: unknown variable ${var}")
            return m.group(0)
        return VARS[var]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, text)

exprs = []
if dash.get("schemaVersion", 0) < 36:
    errors.append("dashboard: schemaVersion missing or old")
names = [v.get("name") for v in dash.get("templating", {}).get("list", [])]
for wanted in ("DS_PROMETHEUS", "name"):
    if wanted not in names:
        errors.append(f"dashboard: no template variable {wanted}")
for v in dash.get("templating", {}).get("list", []):
    if v.get("type") == "query":
        q = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
        if not m:
            errors.append(f"dashboard variable {v['name']}: not label_values(selector, label): {q}")
            continue
        exprs.append((f"variable {v['name']}", substitute(f"variable {v['name']}", m.group(1))))

ids = set()
def walk(panels):
    for p in panels:
        pid = p.get("id")
        if pid in ids:
            errors.append(f"dashboard: panel id {pid} used twice")
        ids.add(pid)
        if "gridPos" not in p:
            errors.append(f"dashboard panel {pid}: no gridPos")
        if p.get("type") == "row":
            walk(p.get("panels", []))
            continue
        where = f"panel {pid} ({p.get('title')!r})"
        if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            errors.append(f"{where}: datasource is not ${{DS_PROMETHEUS}}")
        if not p.get("targets"):
            errors.append(f"{where}: no targets")
        for t in p.get("targets", []):
            w = f"{where} target {t.get('refId')}"
            if t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
                errors.append(f"{w}: datasource is not ${{DS_PROMETHEUS}}")
            expr = t.get("expr", "")
            if not expr.strip():
                errors.append(f"{w}: no expr")
                continue
            check_expr(w, expr)
            exprs.append((w, substitute(w, expr)))
walk(dash.get("panels", []))

# The throwaway rules file (JSON is YAML): one recording rule per expression.
rules = [{"record": f"dashboard_expr_{i}", "expr": e} for i, (_, e) in enumerate(exprs)]
with open(out, "w", encoding="utf-8") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)
with open(out + ".index", "w", encoding="utf-8") as f:
    for i, (w, e) in enumerate(exprs):
        f.write(f"dashboard_expr_{i}: {w}: {e}\n")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(f"ops/check.sh: {len(errors)} problem(s)")
print(f"  {len(exprs)} dashboard expressions, {len(ids)} panels, {len(table)} metrics known")
PY

echo "-- promtool check rules (the dashboard's expressions)"
if ! promtool check rules "$tmp/dashboard.rules.json"; then
    echo "ops/check.sh: a dashboard expression does not parse; the expressions were:" >&2
    cat "$tmp/dashboard.rules.json.index" >&2
    exit 1
fi
echo "-- ops: all checks passed"
