#!/usr/bin/env python3
"""Turn one run of every seqmix benchmark (Google Benchmark JSON files) into a dated report.

    python3 tools/bench_report.py RAW_DIR OUT_DIR

RAW_DIR holds machine_limits.json (seqmix-machine-limits --json) and one <program>.json per
benchmark program (--benchmark_format=json). The report goes to OUT_DIR/<machine>/<date>/:
report.md (tables per family: time, GFLOP/s or GB/s, efficiency against this machine's limits,
speed-up over the reference loop, one- vs two-thread time) and PNG plots (efficiency per
operator as bars; time against T or Tk where a case was run at several lengths). OUT_DIR/README.md
indexes every report kept, per machine, so an EPYC run never overwrites a Xeon run. The report
opens with issue 19 item 4's targets: every case a group of tools/bench_targets.json names, against
its bar, and for a case below the bar the limit known to hold it there (or "not explained").

scripts/bench_report.sh runs the benchmarks and then this script; matplotlib comes from Debian's
python3-matplotlib (installed by `bash scripts/install-deps.sh report`).
"""

import json
import os
import re
import sys
from collections import OrderedDict, defaultdict

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

# Markers in benchmark names (the project's convention: <op>/<form>/<shape>[/variant]).
REFERENCE = "reference"
ONE_THREAD = "1thread"
LENGTH_PATTERN = re.compile(r"(?<![A-Za-z])(Tk|T)(\d+)")
# The bars of issue 19 item 4 and what is known to stop each kernel below its bar.
TARGETS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_targets.json")


def load(raw_dir):
    limits_path = os.path.join(raw_dir, "machine_limits.json")
    with open(limits_path) as f:
        limits = json.load(f)
    programs = OrderedDict()
    for name in sorted(os.listdir(raw_dir)):
        if not name.endswith(".json") or name == "machine_limits.json":
            continue
        with open(os.path.join(raw_dir, name)) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as error:
                sys.exit(f"bench_report: {name} is not valid JSON ({error}); did the program crash?")
        benchmarks = data.get("benchmarks", [])
        # With --benchmark_repetitions the medians stand for each case; otherwise the single runs.
        rows = [dict(b, name=b["run_name"]) for b in benchmarks if b.get("aggregate_name") == "median"]
        if not rows:
            rows = [b for b in benchmarks if b.get("run_type", "iteration") == "iteration"]
        if rows:
            programs[name[: -len(".json")]] = {"context": data.get("context", {}), "rows": rows}
    return limits, programs


def clean_name(name):
    """The case name without Google Benchmark's suffixes."""
    return re.sub(r"/(real_time|process_time|manual_time)$", "", name)


def milliseconds(row):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[row.get("time_unit", "ns")]
    return row["real_time"] * scale


def without_marker(name, marker):
    parts = name.split("/")
    return "/".join(p for p in parts if p != marker) if marker in parts else None


def family_tables(programs):
    """Per program: rows of (case, ms, rate text, eff, speed-up vs reference, 2-thread gain)."""
    tables = OrderedDict()
    for program, data in programs.items():
        cases = OrderedDict((clean_name(r["name"]), r) for r in data["rows"])
        table = []
        for case, row in cases.items():
            parts = case.split("/")
            if REFERENCE in parts or ONE_THREAD in parts:
                continue  # shown as columns of the case they are the baseline of
            rate = ""
            if "GFLOP/s" in row:
                rate = f"{row['GFLOP/s']:.1f} GFLOP/s"
            elif "GB/s" in row:
                rate = f"{row['GB/s']:.1f} GB/s"
            reference = speedup = gain = None
            for other, other_row in cases.items():
                if without_marker(other, REFERENCE) == case:
                    reference = other_row
                if without_marker(other, ONE_THREAD) == case:
                    gain = milliseconds(other_row) / milliseconds(row)
            if reference is not None:
                speedup = milliseconds(reference) / milliseconds(row)
            table.append((case, milliseconds(row), rate, row.get("eff"), speedup, gain))
        if table:
            tables[program] = table
    return tables


def fmt(value, pattern):
    return "" if value is None else pattern.format(value)


def efficiency_plot(program, table, path):
    rows = [(case, eff) for case, _, _, eff, _, _ in table if eff is not None]
    if not rows:
        return False
    height = max(2.5, 0.28 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(9, height))
    labels = [case for case, _ in rows]
    values = [eff for _, eff in rows]
    colors = ["#4c72b0" if v <= 1.0 else "#8c8c8c" for v in values]
    ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("efficiency: fraction of the fp32 FMA peak or of the streaming bandwidth")
    ax.set_title(f"{program}: efficiency (grey: above 1, the working set stays in cache)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def scaling_series(table):
    """Cases that differ only in T or Tk: {(pattern, axis): [(length, ms)]} with >= 3 points."""
    series = defaultdict(list)
    for case, ms, _, _, _, _ in table:
        matches = list(LENGTH_PATTERN.finditer(case))
        if len(matches) != 1:
            continue
        m = matches[0]
        key = (case[: m.start()] + m.group(1) + "*" + case[m.end():], m.group(1))
        series[key].append((int(m.group(2)), ms))
    return {k: sorted(v) for k, v in series.items() if len(v) >= 3}


def scaling_plot(program, series, path):
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (pattern, _), points in sorted(series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=pattern)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T (prefill) or cached keys Tk (decode)")
    ax.set_ylabel("time per call (ms)")
    ax.set_title(f"{program}: time against length", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine_slug(limits):
    model = limits.get("cpu_model", "unknown")
    return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-") or "unknown"


def write_report(limits, programs, out_root, raw_dir):
    date = next(iter(programs.values()))["context"].get("date", "undated")[:10] if programs else "undated"
    out_dir = fresh_report_dir(os.path.join(out_root, machine_slug(limits)), date)
    os.makedirs(out_dir, exist_ok=True)
    tables = family_tables(programs)

    lines = [
        f"# seqmix benchmark report: {limits.get('cpu_model', 'unknown CPU')}, {date}",
        "",
        "Limits of this machine, measured in the same run by `seqmix-machine-limits` on "
        f"{limits.get('threads', '?')} threads ({limits.get('cpu_flags', '')}):",
        "",
        "| limit | value |",
        "|---|---|",
    ]
    for key, unit in (("fp32_fma_gflops", "GFLOP/s"), ("bf16_dot_gflops", "GFLOP/s"), ("int8_dot_gops", "GOP/s"),
                      ("amx_bf16_gflops", "GFLOP/s"), ("amx_int8_gops", "GOP/s"), ("stream_read_gbs", "GB/s")):
        value = limits.get(key)
        lines.append(f"| {key} | {'n/a' if value is None else f'{value:.1f} {unit}'} |")
    lines += [
        "",
        "`eff` is the fraction of the fp32 FMA peak (GFLOP/s cases) or of the streaming read bandwidth "
        "(GB/s cases) reached; above 1 the working set stayed in cache. `vs reference` is the speed-up "
        "over the plain-loop reference in the same run; `2 threads` the speed-up of the two-thread run "
        "over the one-thread run where both were measured. Times are medians only if the run used "
        "repetitions; quote them with the CPU above, never across machines.",
        "",
    ]
    lines += targets_section(limits, programs, TARGETS_PATH)
    pngs = 0
    for program, table in tables.items():
        lines += [f"## {program}", ""]
        eff_png = f"{program}_efficiency.png"
        if efficiency_plot(program, table, os.path.join(out_dir, eff_png)):
            lines += [f"![efficiency of {program}]({eff_png})", ""]
            pngs += 1
        scaling_png = f"{program}_scaling.png"
        if scaling_plot(program, scaling_series(table), os.path.join(out_dir, scaling_png)):
            lines += [f"![time against length for {program}]({scaling_png})", ""]
            pngs += 1
        lines += ["| case | time (ms) | rate | eff | vs reference | 2 threads |", "|---|---|---|---|---|---|"]
        for case, ms, rate, eff, speedup, gain in table:
            lines.append(f"| `{case}` | {ms:.4g} | {rate} | {fmt(eff, '{:.2f}')} | {fmt(speedup, '{:.1f}x')} | "
                         f"{fmt(gain, '{:.2f}x')} |")
        lines.append("")
    lines += grain_section(raw_dir)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines))
    write_index(out_root)
    return out_dir, sum(len(t) for t in tables.values()), pngs


def target_rows(group, programs, has_amx):
    """(case, value, bar, stops, where) for every case of this run that one of the group's patterns names."""
    rows = []
    for spec in group["cases"]:
        pattern = re.compile(spec["pattern"])
        bar = group.get("at_least_with_amx", group["at_least"]) if spec.get("amx_bar") and has_amx else group["at_least"]
        for data in programs.values():
            for row in data["rows"]:
                case = clean_name(row["name"])
                value = row.get(group["counter"])
                if value is not None and pattern.fullmatch(case):
                    rows.append((case, value, bar, spec.get("stops", ""), spec.get("where", "")))
    return rows


def targets_section(limits, programs, path):
    """Issue 19 item 4's bars beside this run's figures, and for each case below its bar the limit that
    holds it there and the page with the measurement (from tools/bench_targets.json)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        groups = json.load(f)["groups"]
    has_amx = limits.get("amx_bf16_gflops") is not None
    lines = ["## Targets (issue 19 item 4)", "",
             "Each case against its bar in this run. Below the bar, `what stops it` names the limit that holds "
             "the case there, as measured on the page named (`tools/bench_targets.json` keeps these); "
             "`not explained` means no measurement says yet.", ""]
    for group in groups:
        rows = target_rows(group, programs, has_amx)
        lines += [f"### {group['target']}", ""]
        if not rows:
            lines += ["No case of this group ran.", ""]
            continue
        met = sum(1 for _, value, bar, _, _ in rows if value >= bar)
        lines += [f"{met} of {len(rows)} cases at or above the bar (counter `{group['counter']}`).", "",
                  "| case | measured | bar | what stops it |", "|---|---|---|---|"]
        for case, value, bar, stops, where in rows:
            if value >= bar:
                reason = "met"
            elif stops:
                reason = f"{stops} ({where})" if where else stops
            else:
                reason = "not explained"
            lines.append(f"| `{case}` | {value:.2f} | {bar:.2f} | {reason} |")
        lines.append("")
    return lines


def grain_section(raw_dir):
    """The table of seqmix-parallel-grain (parallel_grain.md in the raw folder), if it ran."""
    path = os.path.join(raw_dir, "parallel_grain.md")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        text = f.read().splitlines()
    table = [line for line in text if line.startswith("|")]
    summary = [line for line in text if line.startswith("flagged:")]
    if not table:
        return []
    return ["## Thread scaling and parallel grain", "",
            "`seqmix-parallel-grain` in the same run: each family's main prefill and decode, the tasks one call "
            "gives 2 and 64 threads and the share of 64 cores left idle (from the partition code and each task's "
            "CPU time, without 64 cores; see docs/parallel_grain.md), with 1- and 2-thread wall times where the "
            "run measured them.", ""] + table + [""] + summary + [""]


def fresh_report_dir(machine_dir, date):
    """The folder for a new report: <date>, or <date>-b, -c, ... when a report of that date is kept.

    A second run on the same day (another set of programs, or after more work) must not replace
    the first: both are dated records of what the code did then."""
    suffixes = [""] + ["-" + chr(c) for c in range(ord("b"), ord("z") + 1)]
    for suffix in suffixes:
        candidate = os.path.join(machine_dir, date + suffix)
        if not os.path.exists(os.path.join(candidate, "report.md")):
            return candidate
    sys.exit(f"bench_report: too many reports dated {date} in {machine_dir}")


def write_index(out_root):
    """Add a bullet for every kept report the index does not link yet, under its machine's heading.

    The index is edited by hand too (what each run covered, why its limits differ), so existing
    lines are kept: only missing reports are added, newest first within a new heading."""
    path = os.path.join(out_root, "README.md")
    if os.path.exists(path):
        with open(path) as f:
            lines = f.read().rstrip("\n").split("\n")
    else:
        lines = ["# Benchmark reports", "",
                 "One folder per machine kind and date, written by `bash scripts/bench_report.sh`; a run on "
                 "another machine adds its own folder rather than replacing this one."]
    text = "\n".join(lines)
    for machine in sorted(d for d in os.listdir(out_root) if os.path.isdir(os.path.join(out_root, d))):
        dates = sorted(os.listdir(os.path.join(out_root, machine)))
        missing = [d for d in dates if os.path.exists(os.path.join(out_root, machine, d, "report.md"))
                   and f"({machine}/{d}/report.md)" not in text]
        if not missing:
            continue
        heading = f"## {machine}"
        if heading not in lines:
            lines += ["", heading, ""] + [f"- [{d}]({machine}/{d}/report.md)" for d in reversed(missing)]
        else:
            # After the heading's last line (its section ends at the next heading or the file's end).
            end = lines.index(heading) + 1
            while end < len(lines) and not lines[end].startswith("## "):
                end += 1
            while end > 0 and lines[end - 1] == "":
                end -= 1
            lines[end:end] = [f"- [{d}]({machine}/{d}/report.md)" for d in missing]
        text = "\n".join(lines)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    limits, programs = load(argv[1])
    if not programs:
        sys.exit(f"bench_report: no benchmark results in {argv[1]}")
    out_dir, cases, pngs = write_report(limits, programs, argv[2], argv[1])
    print(f"bench_report: {cases} cases, {pngs} plots in {out_dir}/report.md")
    if pngs == 0:
        sys.exit("bench_report: no plot was produced")


if __name__ == "__main__":
    main(sys.argv)
