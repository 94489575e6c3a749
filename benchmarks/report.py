"""The tables of docs/benchmarks.md, rendered from the JSON the benchmarks wrote.

Each table stands between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in docs/benchmarks.md;
BLOCKS maps NAME to its JSON file and renderer. The benchmark scripts call `render_docs()` after
writing their JSON; `python -m benchmarks.report` re-renders every table without measuring, and
tests/test_docs.py fails when a table differs from what its JSON gives.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.provenance import measured_line

ROOT = Path(__file__).resolve().parents[1]

DOC = ROOT / "docs" / "benchmarks.md"
DATA = ROOT / "docs" / "benchmarks"


def _run(throughput: dict, label: str) -> dict:
    return next(r for r in throughput["runs"] if r["run"] == label)


def scan_table(record: dict) -> str:
    from benchmarks.scan import markdown

    return markdown(record) + "\n" + measured_line(record) + "\n"


THROUGHPUT_MODEL_RUN = "H100, this issue"


def conv_table(record: dict) -> str:
    from benchmarks.conv import markdown

    return markdown(record) + "\n" + measured_line(record) + "\n"


def _cost_run(throughput: dict) -> dict:
    """The newest run of `throughput.py train` (bare steps and the loop of each size, one card), else
    the `model` run THROUGHPUT_MODEL_RUN, which has no loop."""
    combined = [r for r in throughput["runs"] if any(x["what"] == "src/train.py" and "size" in x for x in r["records"])]
    return combined[-1] if combined else _run(throughput, THROUGHPUT_MODEL_RUN)


def throughput_model_table(throughput: dict) -> str:
    """Per size: each backbone's bare step, eager and as CUDA graphs where the run has it, the faster
    of the two compared (throughput and memory), and src/train.py on one GPU with the graph off and
    on where the run has those loops (against SSAMBA's faster bare step)."""
    run = _cost_run(throughput)
    steps = {
        (r["backbone"], r["size"], bool(r.get("cuda_graph"))): r
        for r in run["records"]
        if r["what"] == "ssl_pretraining_step"
    }
    loops = {
        (r["size"], r.get("cuda_graph", "false") != "false"): r
        for r in run["records"]
        if r["what"] == "src/train.py" and r.get("devices") == 1
    }
    lines = [
        f'{run["card"]}, run "{run["run"]}" of throughput.json.',
        "",
        "| size | SSAMBA ms / step | as CUDA graphs | SSAMBA samples/s | SSAMBA peak | SSAST ms / step "
        "| as CUDA graphs | SSAST samples/s | SSAST peak | throughput vs SSAST | memory vs SSAST "
        "| src/train.py samples/s, graph off | graph on | vs the bare step |",
        "| --- |" + " --- |" * 13,
    ]

    def faster(backbone: str, size: str) -> tuple[dict | None, dict | None, dict | None]:
        eager, graphed = steps.get((backbone, size, False)), steps.get((backbone, size, True))
        best = graphed if graphed and (eager is None or graphed["samples_per_s"] > eager["samples_per_s"]) else eager
        return eager, graphed, best

    def ms(record: dict | None) -> str:
        return f"{record['ms_per_step']:.1f}" if record else "-"

    for size in ("tiny", "small", "base"):
        (a, a_graphed, a_best), (s, s_graphed, s_best) = faster("ssamba", size), faster("ssast", size)
        if a_best is None or s_best is None:
            continue
        off, on = loops.get((size, False)), loops.get((size, True))
        fastest_loop = max((x for x in (off, on) if x), key=lambda x: x["samples_per_s"], default=None)
        cells = [
            size,
            ms(a),
            ms(a_graphed),
            f"{a_best['samples_per_s']:.1f}",
            f"{a_best['peak_mib'] / 1024:.1f} GiB",
            ms(s),
            ms(s_graphed),
            f"{s_best['samples_per_s']:.1f}",
            f"{s_best['peak_mib'] / 1024:.1f} GiB",
            f"{a_best['samples_per_s'] / s_best['samples_per_s']:.2f}x",
            f"{a_best['peak_mib'] / s_best['peak_mib']:.2f}x",
            f"{off['samples_per_s']:.1f}" if off else "-",
            f"{on['samples_per_s']:.1f}" if on else "-",
            f"{fastest_loop['samples_per_s'] / a_best['samples_per_s']:.2f}x" if fastest_loop else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", measured_line(run)]
    return "\n".join(lines) + "\n"


# the loop through src/train.py: one GPU and two at a global 64 in one run, two at 64 per GPU in the
# next, with {devices: batch per GPU} (those records do not hold it)
THROUGHPUT_TRAIN_RUNS = (
    ("H100 x2, src/train.py experiment=pretrain_tiny, global batch 64 (32 per GPU with 2)", {1: 64, 2: 32}),
    (
        "H100 x2, same machine as the run before, src/train.py experiment=pretrain_tiny, global batch 128 (64 per GPU)",
        {2: 64},
    ),
)


def throughput_train_table(throughput: dict) -> str:
    lines = ["| run | GPUs | batch per GPU | samples/s | ms / step | peak per GPU |", "| --- |" + " --- |" * 5]
    ones = []
    for k, (label, per_gpu_batch) in enumerate(THROUGHPUT_TRAIN_RUNS, start=1):
        for r in _run(throughput, label)["records"]:
            per_gpu = per_gpu_batch[r["devices"]]
            lines.append(
                f"| {k} | {r['devices']} | {per_gpu} | {r['samples_per_s']:.1f} | {r['ms_per_step']:.1f} | "
                f"{r['peak_mib'] / 1024:.1f} GiB |"
            )
            ones += [r] if r["devices"] == 1 else []
    two = _run(throughput, THROUGHPUT_TRAIN_RUNS[1][0])["records"][0]
    lines += [
        "",
        f"Two GPUs at 64 per GPU (run 2) against one GPU (run 1): "
        f"{two['samples_per_s'] / ones[0]['samples_per_s']:.2f}x its samples/s.",
        "",
    ]
    for k, (label, _) in enumerate(THROUGHPUT_TRAIN_RUNS, start=1):
        lines.append(f"Run {k}: {measured_line(_run(throughput, label))}")
    return "\n".join(lines) + "\n"


def _series(efficiency: dict, backbone: str, size: str, mode: str, precision: str) -> dict[int, dict]:
    for s in efficiency["series"]:
        if (s["backbone"], s["size"], s["mode"], s["precision"]) == (backbone, size, mode, precision):
            return {p["tokens"]: p for p in s["points"] if not p.get("oom")}
    return {}


EFFICIENCY_COLUMNS = [
    ("ssamba", "mamba", "SSAMBA mamba"),
    ("ssamba", "triton", "SSAMBA triton"),
    ("ssamba", "triton+graph", "SSAMBA triton+graph"),
    ("ssast", "explicit", "SSAST explicit"),
    ("ssast", "sdpa", "SSAST SDPA"),
    ("ssast", "sdpa+graph", "SSAST SDPA+graph"),
]


def efficiency_tiny_table(efficiency: dict) -> str:
    columns = {label: _series(efficiency, b, "tiny", m, "bf16") for b, m, label in EFFICIENCY_COLUMNS}
    tokens = sorted({t for points in columns.values() for t in points})
    lines = ["| tokens | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for t in tokens:
        cells = [f"{p[t]['ms']:.1f} / {p[t]['peak_mib']:.0f}" if t in p else "-" for p in columns.values()]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", measured_line(efficiency)]
    return "\n".join(lines) + "\n"


def _fastest(efficiency: dict, backbone: str, size: str, precision: str, tokens: int, modes) -> tuple[str, dict]:
    found = [(m, _series(efficiency, backbone, size, m, precision).get(tokens)) for m in modes]
    return min(((m, p) for m, p in found if p), key=lambda mp: mp[1]["ms"])


def paper_claim_table(efficiency: dict) -> str:
    """SSAMBA-tiny at 22000 tokens, fastest mode, against SSAST-tiny with explicit attention."""
    lines = ["| precision | SSAMBA (fastest mode) | SSAST explicit | faster by | less memory by |"]
    lines += ["| --- |" + " --- |" * 4]
    for precision, label in (("fp32", "fp32 (as the official benchmark)"), ("bf16", "bf16")):
        mode, a = _fastest(efficiency, "ssamba", "tiny", precision, 22000, ("mamba", "triton", "triton+graph"))
        s = _series(efficiency, "ssast", "tiny", "explicit", precision)[22000]
        lines.append(
            f"| {label} | {a['ms']:.1f} ms / {a['peak_mib']:.0f} MiB ({mode}) | {s['ms']:.1f} ms / "
            f"{s['peak_mib']:.0f} MiB | {100 * (1 - a['ms'] / s['ms']):.2f}% | "
            f"{100 * (1 - a['peak_mib'] / s['peak_mib']):.2f}% |"
        )
    lines += ["", measured_line(efficiency)]
    return "\n".join(lines) + "\n"


FLOOR_ROWS = (("tiny", 512), ("tiny", 22000), ("small", 22000), ("base", 22000), ("base", 75000))


def floor_table(efficiency: dict) -> str:
    from benchmarks.efficiency import floors

    f = efficiency["floors"]
    lines = [
        "| size | tokens | scan GB | scan GFLOP | encoder GB | encoder GFLOP | floor ms | measured ms | x floor |",
        "| --- |" + " --- |" * 8,
    ]
    for size, tokens in FLOOR_ROWS:
        _, best = _fastest(efficiency, "ssamba", size, "bf16", tokens, ("mamba", "triton", "triton+graph"))
        fl = floors(size, tokens, f["copy_GBps"], f["bf16_matmul_TFLOPs"])
        lines.append(
            f"| {size} | {tokens} | {fl['scan_GB']:.2f} | {fl['scan_GFLOP']:.0f} | {fl['encoder_GB']:.2f} | "
            f"{fl['encoder_GFLOP']:.0f} | {fl['encoder_floor_ms']:.2f} | {best['ms']:.1f} | "
            f"{best['ms'] / fl['encoder_floor_ms']:.0f} |"
        )
    lines += ["", measured_line(efficiency)]
    return "\n".join(lines) + "\n"


def cpu_table(cpu: dict) -> str:
    m = cpu["machine"]
    lines = [
        f"{m['cores']} cores ({m['cpu']}), {m['torch_threads']} torch threads, torch {m['torch']}; seconds, "
        "best of the timed runs, no autograd.",
        "",
        "| (batch, channels, length) | portable scan | plain step-by-step loop | portable vs loop |",
        "| --- | --- | --- | --- |",
    ]
    for r in cpu["scan"]:
        lines.append(
            f"| {tuple(r['shape'])} | {r['portable_s']:.3f} | {r['plain_loop_s']:.3f} | "
            f"{r['plain_loop_s'] / r['portable_s']:.2f}x faster |"
        )
    e = cpu["embed"]
    lines += [
        "",
        f"`python -m src.embedding` on one {e['minutes']:g}-minute file ({e['preset']}): {e['seconds']:.1f} s.",
    ]
    lines += ["", measured_line(cpu)]
    return "\n".join(lines) + "\n"


def threads_medians(threads: dict) -> list[dict]:
    """Per case: the median step (statistics.median: the mean of the two middle steps of an even
    count) and the slowdown against the same setting on the idle machine."""
    cases = [{**c, "median_step_s": statistics.median(c["step_s"]) if c["step_s"] else None} for c in threads["cases"]]
    idle = {c["setting"]: c["median_step_s"] for c in cases if not c["busy"]}
    for c in cases:
        base = idle.get(c["setting"])
        c["slowdown"] = c["median_step_s"] / base if c["median_step_s"] and base else None
    return cases


def threads_table(threads: dict) -> str:
    lines = [
        "| machine | setting (threads) | seconds per step (median) | steps | x the same setting idle |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in threads_medians(threads):
        step = f"{c['median_step_s']:.2f}" if c["median_step_s"] else f"> {c['timed_out_after_s']:.0f} (timed out)"
        each = ", ".join(f"{s:.2f}" for s in c["step_s"])
        slow = f"{c['slowdown']:.1f}x" if c["slowdown"] else "-"
        machine = "busy" if c["busy"] else "idle"
        lines.append(f"| {machine} | {c['setting']} ({c['threads']}) | {step} | {each} | {slow} |")
    lines += ["", measured_line(threads)]
    return "\n".join(lines) + "\n"


def index_table(record: dict) -> str:
    j, c = record["jsonl"], record["columns"]

    def workers(side: dict) -> str:
        extra = [w["extra_private_mib"] for w in side["workers"]]
        return f"{min(extra):,.1f} to {max(extra):,.1f} MiB ({len(extra)} workers)"

    lines = [
        f"A synthetic index of {record['clips']:,} clips in the store's format, each side in a fresh process; "
        "the workers read every row's shard, row, frame count and labels.",
        "",
        "| index | on disk | load | the index in the main process | each loader worker's extra private memory |",
        "| --- | --- | --- | --- | --- |",
        f"| index.jsonl read as Python objects (before) | {j['file_mib']:.0f} MiB | {j['load_s']:.1f} s | "
        f"{j['growth_mib']:,.0f} MiB | {workers(j)} |",
        f"| columns, memory-mapped (`index/`) | {c['disk_mib']:.0f} MiB | {c['load_s']:.2f} s | "
        f"{c['growth_mib']:,.0f} MiB (shared pages) | {workers(c)} |",
        "",
        f"Writing the columns from index.jsonl (`verify --upgrade`, or the build's last step): {c['write_s']:.0f} s. "
        f"A loader of {len(c['workers'])} workers reading one record a sample: {c['loader_samples_per_s']:,.0f} "
        "samples/s.",
        "",
        measured_line(record),
    ]
    return "\n".join(lines) + "\n"


def scan_sass_table(record: dict) -> str:
    from benchmarks.scan_sass import markdown

    return markdown(record)


def build_rate_table(record: dict) -> str:
    from benchmarks.build_rate import table  # its own module: it also writes the clips it times

    return table(record)


BLOCKS = {
    "scan": ("scan.json", scan_table),
    "conv": ("conv.json", conv_table),
    "throughput-model": ("throughput.json", throughput_model_table),
    "throughput-train": ("throughput.json", throughput_train_table),
    "efficiency-tiny": ("efficiency.json", efficiency_tiny_table),
    "paper-claim": ("efficiency.json", paper_claim_table),
    "floor": ("efficiency.json", floor_table),
    "cpu": ("cpu.json", cpu_table),
    "threads": ("threads.json", threads_table),
    "index": ("index.json", index_table),
    "build-rate": ("build_rate.json", build_rate_table),
    "scan-sass": ("scan_sass.json", scan_sass_table),
}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def block(text: str, name: str) -> str | None:
    """The text between NAME's markers, or None without them."""
    begin, end = _markers(name)
    if begin not in text or end not in text:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0].lstrip("\n")


def rendered(name: str, data: Path = DATA) -> str:
    file, render = BLOCKS[name]
    return render(json.loads((data / file).read_text()))


def stale(doc: Path = DOC, data: Path = DATA) -> list[str]:
    """The blocks of doc whose text is not what their JSON renders to (or whose markers are missing)."""
    text = doc.read_text()
    return [name for name in BLOCKS if block(text, name) != rendered(name, data)]


def parse_shape(text: str) -> tuple[int, int, int]:
    """ "64x384x513" -> (batch, channels, length)."""
    batch, dim, length = (int(v) for v in text.lower().split("x"))
    return batch, dim, length


def kernel_parser(doc: str, name: str, shapes: list[str]):
    """The command line a kernel benchmark (scan.py, conv.py) shares: shapes (batch x E x L), timing
    runs, --sweep, where its JSON, table and figure go, and --from-json to render without measuring."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape(s) for s in shapes])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sweep", action="store_true", help="also time a grid of launch shapes")
    parser.add_argument("--reps", type=int, default=10, help="calls in one timed CUDA graph")
    parser.add_argument("--out", type=Path, default=DATA)
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / f"{name}.png")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the table in docs/benchmarks.md")
    parser.add_argument("--from-json", type=Path, help=f"render from a {name}.json, measure nothing")
    kernels = {"scan": "scan_kernels.py", "conv": "conv_triton.py"}[name]
    parser.add_argument("--against", type=Path, help=f"a {kernels} of another commit to time beside this one")
    parser.add_argument("--against-label", default="triton before", help="its name in the table")
    return parser


def load_module(path: Path, label: str):
    """A kernels file of another commit (git show OLD:src/kernels/... > FILE), as a module of its
    own, named in the tables by label: a before/after in one run."""
    import importlib.util

    if not path.is_file():
        raise SystemExit(f"--against {path}: no such file; write one with git show COMMIT:src/kernels/NAME > {path}")
    spec = importlib.util.spec_from_file_location(f"against_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.label = label
    return module


def publish(name: str, record: dict, args, markdown, plot) -> int:
    """A kernel benchmark's outputs from its record: args.out/<name>.json (unless the record was read
    from one, --from-json), args.out/<name>.md (the table markdown(record) gives), the figure
    plot(record, args.figure) draws, and the table in docs/benchmarks.md between NAME's markers
    unless args.no_docs; the table printed."""
    from src.utils.io import write_json, write_text

    args.out.mkdir(parents=True, exist_ok=True)
    if not args.from_json:
        write_json(args.out / f"{name}.json", record)
    table = markdown(record)
    write_text(args.out / f"{name}.md", table)
    plot(record, args.figure)
    if not args.no_docs:
        render_docs(data=args.out, names=[name])
    print(table)
    return 0


def phase_bars(rows: list[dict], bars, phases: tuple[str, ...], title: str, path: Path) -> None:
    """The kernel benchmarks' figure: a panel a shape (row: batch, dim, length), in it a group of
    bars a name, a bar a phase; bars(row) gives [(name, {phase: ms})]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 3.6), squeeze=False)
    for ax, row in zip(axes[0], rows):
        named = bars(row)
        for i, phase in enumerate(phases):
            values = [ms[phase] for _, ms in named]
            ax.bar([j + 0.4 * i for j in range(len(named))], values, width=0.4, label=phase.replace("_", " + "))
        ax.set_xticks([j + 0.2 for j in range(len(named))], [name for name, _ in named], fontsize=7, rotation=15)
        ax.set_title(f"{row['batch']} x {row['dim']} x {row['length']}", fontsize=9)
        ax.set_ylabel("ms")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """fig as a PNG at path, written to a temporary file first and renamed; the figure closed."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    plt.close(fig)


def render_docs(doc: Path = DOC, data: Path = DATA, names=None) -> None:
    """Write every block (or those named) into doc from its JSON, atomically."""
    from src.utils.io import write_text

    text = doc.read_text()
    for name in names or BLOCKS:
        begin, end = _markers(name)
        if block(text, name) is None:
            print(f"{doc} has no {begin} ... {end} markers; {name} is in its JSON only")
            continue
        head, rest = text.split(begin, 1)
        text = f"{head}{begin}\n{rendered(name, data)}{end}{rest.split(end, 1)[1]}"
    write_text(doc, text)


if __name__ == "__main__":
    render_docs()
    print(f"rendered {', '.join(BLOCKS)} into {DOC}")
