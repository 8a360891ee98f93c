"""Markdown tables from ``benchmarks/results/*.json``: the docs' figures, never retyped.

    python -m benchmarks.report                          # every results file, to stdout
    python -m benchmarks.report -o docs/benchmarks.md    # or into a file
    python -m benchmarks.report --get bench:bars.0.value # one figure (what the docs quote)

The docs build calls ``markdown()`` and ``figure()`` through ``docs/hooks.py``, so the site
shows the results files as they are at build time. Every section names the CPU, the date
and the command that produced its file. Files are recognised by their shape:

- ``benchmarks.bench`` (``machine``, ``latency`` and/or ``families``, ...): models side by side, the
  model families at their input sizes, end to end, bars;
- ``benchmarks.bulk_bench`` (``runs`` with ``bulk_all_s``): ``bulk`` against ``heatmap``;
- ``benchmarks.live_bench --json`` (rows with ``offered_fps``): live pipe throughput and latency;
- anything else: its scalar fields, each list of rows and each section (flattened), as
  tables, so a new results file shows up without a change here.

A file may carry ``date`` and ``command`` itself (preferred). Without them, the date is the
one of the git commit that last changed the file, and the command is rebuilt from the
settings the file records; the page says so.

Standard library only: the docs build needs nothing else.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


class ReportError(Exception):
    """A results file or a figure reference that cannot be read; the message names it."""


@dataclass
class Result:
    """One results file: its data, what made it, and on what."""

    name: str  # the file's stem, e.g. "amd-epyc-2c-vnni"
    kind: str  # "bench", "bulk", "live" or "other"
    data: dict
    cpu: str
    date: str
    command: str
    notes: list[str] = field(default_factory=list)


def _kind(data: dict) -> str:
    if isinstance(data.get("machine"), dict) and ("latency" in data or "families" in data):
        return "bench"
    runs = data.get("runs")
    if isinstance(runs, list) and runs and isinstance(runs[0], dict) and "bulk_all_s" in runs[0]:
        return "bulk"
    if any(isinstance(x, dict) and "offered_fps" in x for v in data.values() if isinstance(v, list) for x in v):
        return "live"
    return "other"


def _git_date(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cs", "--", path.name], cwd=path.parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu(data: dict, kind: str) -> str:
    if kind == "bench":
        m = data["machine"]
        isa = m.get("isa") or "no AVX2/AVX-512/VNNI/dot-product"
        return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {isa.replace(' ', ' + ').upper()}"
    nested = [v for v in data.values() if isinstance(v, dict)]
    first = next((v for v in [data, *nested] if v.get("cpu")), {})
    cpu = first.get("cpu") or "CPU not recorded"
    flags = first.get("flags") or first.get("cpu_flags")
    if isinstance(flags, list) and flags:
        cpu += ", " + " + ".join(str(f).upper() for f in flags)
    return cpu


def _command(data: dict, kind: str, name: str) -> tuple[str, bool]:
    """The command that made the file, and whether it was rebuilt from recorded settings."""
    if data.get("command"):
        return str(data["command"]), False
    if kind == "bench":
        quick = " --quick" if data.get("quick") else ""
        return f"python -m benchmarks.bench{quick} --out benchmarks/results", True
    if kind == "bulk":
        model = Path(str(data.get("model", "models/midas_small.int8.onnx"))).name
        return (f"python -m benchmarks.bulk_bench --model models/{model} --count {data.get('photos', '?')} "
                f"--runs {len(data['runs'])}"), True
    return f"(not recorded in {name}.json)", True


def load(folder: Path = RESULTS) -> list[Result]:
    """Every ``*.json`` in ``folder``, sorted by name."""
    results = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ReportError(f"{path}: not readable as JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ReportError(f"{path}: expected a JSON object at the top")
        kind = _kind(data)
        notes = [data["note"]] if isinstance(data.get("note"), str) else []
        date = data.get("date") or (data.get("machine") or {}).get("date")
        if not date:
            date = _git_date(path)
            notes.append("date: of the commit that last changed the file (the file records none)"
                         if date else "date: not recorded")
            date = date or "not recorded"
        command, rebuilt = _command(data, kind, path.stem)
        if rebuilt and kind in ("bench", "bulk"):
            notes.append("command: rebuilt from the settings the file records")
        results.append(Result(path.stem, kind, data, _cpu(data, kind), date, command, notes))
    return results


# ---------------------------------------------------------------- tables

def _table(head: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def _f(value, fmt: str = ".1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, (int, float)):
        return format(value, fmt)
    return str(value)


def _header(r: Result, title: str) -> list[str]:
    lines = [f"## {title}", "", f"- **CPU:** {r.cpu}", f"- **Date:** {r.date}",
             f"- **Command:** `{r.command}`", f"- **File:** `benchmarks/results/{r.name}.json`"]
    lines += [f"- *{n}*" for n in r.notes]
    return lines + [""]


def _bench(r: Result) -> list[str]:
    d = r.data
    m = d["machine"]
    lines = _header(r, f"Model variants: {m.get('cpu', '?')}, {m.get('cores', '?')} cores")
    versions = ", ".join(f"{k[2:]} {v}" for k, v in m.items() if k.startswith("v_"))
    if versions:
        lines += [f"Versions: {versions}.", ""]
    if d.get("weights_note"):
        lines += [d["weights_note"], ""]
    if d.get("latency"):
        lines += _bench_midas(d)
    if d.get("families"):
        lines += _families(d["families"])
    bars = d.get("bars") or []
    if bars:
        rows = [[b["bar"], b["value"], b["target"], "not judged here" if b["met"] is None else _f(bool(b["met"]))]
                for b in bars]
        lines += ["### Bars (ratios from this run, all cores)", ""] + _table(["bar", "value", "target", "met"], rows)
    return lines


def _families(f: dict) -> list[str]:
    """The model families side by side at their input sizes, and INT8 per integer path for each."""
    rows = [[r["model"], r["variant"], r["size"], _f(r["median_ms"]), _f(r["p95_ms"]), r["runs"],
             _f(r.get("absrel"), ".4f"), _f(r.get("delta1"), ".4f"), _f(r.get("worst_delta1"), ".4f")] for r in f["rows"]]
    lines = [f"### Model families at their input sizes (batch 1, {f['threads']} threads)", ""]
    lines += _table(["model", "variant", "input size", "median ms", "p95 ms", "runs", "AbsRel vs ONNX fp32", "δ<1.25",
                     "δ<1.25 worst"], rows)
    for key, p in (f.get("int8_paths") or {}).items():
        lines += _int8_paths(p, f"{key} at {p['size']}x{p['size']}")
    return lines + fp32_floor_lines(f)


def fp32_floor_lines(families: dict) -> list[str]:
    """Each family's fp32 floor estimate (bench.fp32_floor) beside its PyTorch eager time: the
    most an fp32 graph of the same arithmetic would gain over eager at that MatMul rate."""
    floors = families.get("fp32_floor") or {}
    if not floors:
        return []
    rows = []
    for key, f in floors.items():
        eager = next((r["median_ms"] for r in families["rows"] if r["family"] == key and r["size"] == f["size"]
                      and r["variant"] == f"{key}-pytorch-eager"), None)
        rows.append([key, f["size"], f["gflop"], f["sgemm_gflops"], f["floor_ms"], _f(eager),
                     f"{eager / f['floor_ms']:.2f}x" if eager else "-"])
    return ["", "### fp32 floor, an estimate: multiply-adds at onnxruntime's large-MatMul rate here, every other "
            "op free", ""] + _table(["model", "input size", "GFLOP", "MatMul GFLOPS", "floor ms", "PyTorch eager ms",
                                     "estimated most ONNX fp32 speed-up over eager"], rows)


def _bench_midas(d: dict) -> list[str]:
    """MiDaS small's variants: latency, second shape, INT8 paths, roofline, end to end."""
    lines: list[str] = []
    shape = d.get("shape", "256x256")  # results files written before the field: MiDaS small at 256
    threads = sorted(d["latency"], key=int)
    head = ["variant", "size MB"]
    for t in threads:
        head += [f"{t} thr median ms", f"{t} thr p95 ms", f"{t} thr batch-4 img/s"]
    head += ["AbsRel vs fp32", "δ<1.25", "cold start s", "peak RSS MB"]
    rows = []
    for v in d.get("variants", []):
        n = v["name"]
        row = [n, _f(v.get("size_mb"))]
        for t in threads:
            x = d["latency"][t].get(n) or {}
            row += [_f(x.get("median_ms")), _f(x.get("p95_ms")), _f(x.get("batch4_images_per_s"))]
        fid = (d.get("fidelity") or {}).get(n) or {}
        cold = (d.get("cold_start") or {}).get(n) or {}
        row += [_f(fid.get("absrel"), ".4f"), _f(fid.get("delta1"), ".4f"),
                _f(cold.get("cold_start_s"), ".2f"), _f(cold.get("peak_rss_mb"), ".0f")]
        rows.append(row)
    lines += [f"### Latency at {shape} (batch 1) and batch-4 throughput", ""] + _table(head, rows)
    second = d.get("latency_second_size") or {}
    if second:
        rows = [[n, t, _f(x["median_ms"]), _f(x["p95_ms"])]
                for t in sorted(second, key=int) for n, x in second[t].items()]
        lines += [f"### Dynamic-size models at {d.get('second_shape', '192x256')} (a 640x480 photo after upstream's "
                  "resize), batch 1", ""]
        lines += _table(["variant", "threads", "median ms", "p95 ms"], rows)
    paths = d.get("int8_paths")
    if paths:
        lines += _int8_paths(paths)
    roof = d.get("roofline")
    if roof:
        rows = [[t, _f(x["sgemm_gflops"]), _f(x["floor_ms"]), n, _f(d["latency"][t][n]["median_ms"]), _f(share, ".2f")]
                for t, x in roof["threads"].items() for n, share in x["share_of_floor"].items()]
        lines += [f"### Roofline: fp32 against this CPU's sgemm (model: {roof['model_gflop_256']:.2f} GFLOP at {shape})",
                  ""]
        lines += _table(["threads", "sgemm GFLOP/s (onnxruntime MatMul 1024^3)", "floor ms", "variant", "median ms",
                         "share of floor"], rows)
    e2e = d.get("end_to_end") or {}
    if e2e:
        rows = [[size, n, x.get("network_shape", "-"), _f(x.get("inference_images_per_s")), _f(x.get("loop_images_per_s")),
                 _f(x.get("cli_images_per_s")), _f(x.get("cli_vs_inference"), ".2f"), _f(x.get("cli_wall_images_per_s"))]
                for size, variants in e2e.items() for n, x in variants.items()]
        lines += ["### End to end: JPEG photos -> heatmap PNGs (images/s)", ""]
        lines += _table(["photos", "variant", "network shape", "inference only (all cores)", "DepthHeatmapper loop",
                         "`heatmap` CLI", "CLI / inference", "CLI incl. start-up"], rows)
    return lines


def _int8_paths(p: dict, what: str = "") -> list[str]:
    """Static INT8 fidelity on this CPU's integer path and on the AVX2-only one (emulated)."""
    rows = [[f"this CPU: {p['this_cpu']['path']}", _f(p["this_cpu"]["absrel"], ".4f"), _f(p["this_cpu"]["delta1"], ".4f"),
             _f(p["this_cpu"]["worst_delta1"], ".4f"), "-"]]
    other = p.get("avx2_emulated")
    if isinstance(other, dict):
        rows.append([other["path"], _f(other["absrel"], ".4f"), _f(other["delta1"], ".4f"), _f(other["worst_delta1"], ".4f"),
                     f"{other['max_diff_of_range_vs_this_cpu']:.1e} of range"])
    lines = [f"### Static INT8 fidelity against fp32 per integer path{' (' + what + ')' if what else ''} "
             f"(file layout {p['layout']})", ""]
    lines += _table(["integer path", "AbsRel mean", "δ<1.25 mean", "δ<1.25 worst", "max difference from this CPU"], rows)
    if isinstance(other, str):
        lines += [f"AVX2-only path: {other}.", ""]
    return lines


def _bulk(r: Result) -> list[str]:
    d = r.data
    lines = _header(r, f"`bulk` against `heatmap`: {d.get('photos', '?')} photos at {d.get('size', '?')}")
    rows = []
    for i, x in enumerate(d["runs"], 1):
        steady = (f"{_f(x.get('bulk_steady_images_per_s'))} / {_f(x.get('heatmap_steady_images_per_s'))} img/s = "
                  f"{_f(x.get('steady_ratio'), '.2f')}")
        rows.append([i, f"{_f(x.get('heatmap_one_s'), '.2f')} s", f"{_f(x.get('bulk_one_s'), '.2f')} s",
                     f"{_f(x.get('bulk_startup_floor_s'), '.2f')} s", f"{_f(x.get('heatmap_all_s'))} s",
                     f"{_f(x.get('bulk_all_s'))} s", steady, _f(x.get("wall_ratio"), ".2f")])
    lines += _table(["run", "`heatmap` 1 photo", "`bulk` 1 photo (start-up)", "its CPU-s / cores", "`heatmap` all",
                     "`bulk` all", "steady state bulk / heatmap", "wall bulk / heatmap"], rows)
    extra = [k for k in ("heatmap_vs_inference",) if any(k in x for x in d["runs"])]
    if extra:
        lines += _table(["run", "`heatmap` steady state / inference alone"],
                        [[i, _f(x.get("heatmap_vs_inference"), ".2f")] for i, x in enumerate(d["runs"], 1)])
    cost = d.get("ray_call_cost") or d.get("ray_data_task_cost")
    if isinstance(cost, dict):
        lines += ["Ray's own cost per call:", ""] + _table(["figure", "value"], [[k, _f(v, "g")] for k, v in cost.items()])
    targets, met = d.get("targets") or {}, d.get("met_in_every_run") or {}
    if targets or met:
        lines += _table(["target", "value"], [[k, v] for k, v in targets.items()])
        lines += _table(["met in every run", ""], [[k, _f(bool(v))] for k, v in met.items()])
    return lines


def _title(r: Result) -> str:
    rows = [x for v in r.data.values() if isinstance(v, list) for x in v if isinstance(x, dict)]
    if any("offered_fps" in x for x in rows):
        size = r.data.get("size")
        size = "x".join(str(v) for v in size) if isinstance(size, list) else size or "?"
        return f"Live input: {size} frames offered on a pipe, newest frame wins"
    return r.name


def _other(r: Result) -> list[str]:
    d = r.data
    lines = _header(r, _title(r))
    scalars = [[k, _f(v, "g")] for k, v in d.items()
               if not isinstance(v, (dict, list)) and k not in ("date", "command", "cpu", "flags")]
    scalars += [[k, ", ".join(str(x) for x in v)] for k, v in d.items()
                if isinstance(v, list) and v and not any(isinstance(x, (dict, list)) for x in v) and k != "flags"]
    if scalars:
        lines += _table(["field", "value"], scalars)
    for k, v in d.items():
        if isinstance(v, dict):  # one run or section: its figures, flattened
            leaves = [[name, _f(x, "g")] for name, x in _flatten(v) if name not in ("cpu", "cpu_flags", "flags")]
            if leaves:
                lines += [f"### {k}", ""] + _table(["figure", "value"], leaves)
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            head = list(dict.fromkeys(key for x in v for key in x))
            lines += [f"### {k}", ""] + _table(head, [[_f(x.get(h), "g") if not isinstance(x.get(h), (dict, list))
                                                        else json.dumps(x.get(h)) for h in head] for x in v])
    return lines


def _flatten(value: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in value.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, name + ".")
        elif isinstance(v, list):
            out.append((name, ", ".join(str(x) for x in v)))
        else:
            out.append((name, v))
    return out


def markdown(folder: Path = RESULTS) -> str:
    """All results files as markdown sections (``##`` per file), newest bench run first."""
    results = load(folder)
    if not results:
        raise ReportError(f"no results files in {folder}")
    order = {"bench": 0, "bulk": 1, "live": 2, "other": 3}
    results.sort(key=lambda r: (order[r.kind], _neg_date(r.date), r.name))
    lines: list[str] = []
    for r in results:
        lines += {"bench": _bench, "bulk": _bulk, "live": _other, "other": _other}[r.kind](r)
    return "\n".join(lines).rstrip() + "\n"


def _neg_date(date: str) -> str:
    # newest first within a kind: invert each digit so a plain sort works on ISO dates
    return "".join(chr(ord("9") - ord(c) + ord("0")) if c.isdigit() else c for c in date)


# ---------------------------------------------------------------- single figures

def figure(ref: str, folder: Path = RESULTS) -> str:
    """One figure from a results file, as text: ``FILE:dotted.path[:format]``.

    ``FILE`` is a file's stem (``amd-epyc-2c-vnni``) or a kind (``bench``, ``bulk``, ``live``: that
    kind's newest file that holds the figure; on one date a whole bench before a partial one).
    ``dotted.path`` walks dict keys and list indexes (``bars.0.value``,
    ``latency.2.onnx-int8-static.median_ms``), and picks the first row of a list whose fields
    match (``rows.variant=da-onnx-fp32&size=364``). ``format`` is a Python format spec (``.1f``).
    ``cpu`` and ``date`` give the file's CPU and date.
    """
    parts = ref.split(":")
    if len(parts) not in (2, 3):
        raise ReportError(f"figure reference {ref!r}: expected FILE:path[:format]")
    which, path = parts[0], parts[1]
    fmt = parts[2] if len(parts) == 3 else ""
    results = load(folder)
    # a kind: its newest file that holds the figure (a ``--models da`` bench has no MiDaS rows)
    top = path.split(".")[0]
    matches = [r for r in results if r.name == which] or sorted(
        (r for r in results if r.kind == which and (path in ("cpu", "date", "command") or top in r.data)),
        key=lambda r: (_neg_date(r.date), "latency" not in r.data))
    if not matches:
        raise ReportError(f"figure reference {ref!r}: no results file or kind {which!r} in {folder}")
    r = matches[0]
    if path in ("cpu", "date", "command"):
        return getattr(r, path)
    value: object = r.data
    for key in path.split("."):
        if isinstance(value, list) and "=" in key:  # the first row whose fields have these values
            wanted = [cond.split("=", 1) for cond in key.split("&")]
            if any(len(cond) != 2 for cond in wanted):
                raise ReportError(f"figure reference {ref!r}: {key!r} must be field=value[&field=value]")
            rows = [x for x in value if isinstance(x, dict) and all(_same(x.get(f), v) for f, v in wanted)]
            if not rows:
                raise ReportError(f"figure reference {ref!r}: no row with {key!r} in {r.name}.json")
            value = rows[0]
        elif key == "@all" and isinstance(value, dict) and value and all(k.isdigit() for k in value):
            value = value[max(value, key=int)]  # the most threads: all cores of that machine
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise ReportError(f"figure reference {ref!r}: {key!r} not found in {r.name}.json")
    if isinstance(value, (dict, list)):
        raise ReportError(f"figure reference {ref!r}: {path!r} is not a single value")
    return format(value, fmt) if fmt else str(value)


def _same(value, wanted: str) -> bool:
    """A row's field against the text of a reference: numbers by value (``30`` matches 30.0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(wanted) == float(value)
        except ValueError:
            return False
    return str(value) == wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of results JSON files")
    parser.add_argument("-o", "--output", type=Path, help="write the markdown here instead of stdout")
    parser.add_argument("--get", metavar="FILE:path[:format]", help="print one figure")
    args = parser.parse_args(argv)
    try:
        text = figure(args.get, args.results) + "\n" if args.get else markdown(args.results)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
