"""The model card (README.md) of an export published on the Hugging Face Hub: what the encoder is,
what it was trained on and for how long, its results, its input, its licence, the command that
reproduces it and how to load it. Everything comes from the export's config.json, the checkpoint
and the run folder the checkpoint sits in (metrics.json, Hydra's .hydra/config.yaml and
overrides.yaml); what is not recorded there is said to be unknown, never guessed.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

RESULT_PREFIXES = ("test/", "val/")


def run_record(ckpt_path: str | Path) -> dict:
    """What the run folder of <run>/checkpoints/<name>.ckpt says: metrics.json, the composed config and
    the command-line overrides (each {} or [] when absent)."""
    run = Path(ckpt_path).resolve().parent.parent
    record = {"metrics": {}, "config": {}, "overrides": []}
    sources = (
        ("metrics", run / "metrics.json", json.loads),
        ("config", run / ".hydra" / "config.yaml", yaml.safe_load),
        ("overrides", run / ".hydra" / "overrides.yaml", yaml.safe_load),
    )
    for key, path, parse in sources:
        try:
            record[key] = parse(path.read_text()) or record[key]
        except (OSError, ValueError, yaml.YAMLError):
            pass
    return record


def results(metrics: dict) -> dict[str, float]:
    """The numeric test and validation metrics of a metrics.json."""
    return {
        k: float(v)
        for k, v in sorted(metrics.items())
        if k.startswith(RESULT_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def model_card(repo_id: str, meta: dict, parameters: int, global_step: int | None, run: dict, license: str) -> str:
    """README.md for repo_id. meta: the export's config.json; parameters: the encoder's count."""
    enc, data = meta["encoder"], meta.get("data") or {}
    name = repo_id.split("/")[-1]
    scores = results(run["metrics"])
    data_config = run["config"].get("data") or {}
    task = data_config.get("_target_", "").rsplit(".", 1)[-1] or "unknown"
    sources = ", ".join(
        f"{Path(str(s.get('path'))).name} ({s.get('split') or 'every clip'}, weight {s.get('weight')})"
        for s in data_config.get("sources") or []
        if isinstance(s, dict)
    )
    experiment = next((o.split("=", 1)[1] for o in run["overrides"] if o.startswith("experiment=")), None)
    front = {
        "library_name": "ssamba",
        "license": license,
        "tags": ["audio", "self-supervised-learning", "mamba", enc.get("backbone", "ssamba")],
        "pipeline_tag": "feature-extraction",
    }
    tests = {k: v for k, v in scores.items() if k.startswith("test/")}
    if tests:
        dataset = experiment or task
        front["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "audio-classification"},
                        "dataset": {"name": dataset, "type": dataset},
                        "metrics": [{"type": k.split("/", 1)[1], "value": v, "name": k} for k, v in tests.items()],
                    }
                ],
            }
        ]
    command = " ".join(["python -m src.train", *run["overrides"]]) if run["overrides"] else None
    settings = data.get("fbank") or {}
    fbank = ", ".join(f"{k} {v}" for k, v in settings.items() if k not in ("sample_rate", "num_mel_bins"))
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {name}",
        "",
        f"A {enc.get('backbone', 'ssamba')} audio encoder ({enc.get('embed_dim')} wide, {enc.get('depth')} layers, "
        f"{enc.get('fshape')} x {enc.get('tshape')} patches at stride {enc.get('fstride')} x {enc.get('tstride')}, "
        f"{parameters:,} parameters), exported by the ssamba project's `python -m src.export`.",
        "",
        "## Load it",
        "",
        "```python",
        "from src.embedding.processor import SSAMBAProcessor",
        "from src.models.pretrained import from_pretrained",
        f'encoder, processor = from_pretrained("{repo_id}"), SSAMBAProcessor.from_pretrained("{repo_id}")',
        "tokens = encoder(processor(waveform, sampling_rate=16000))  # (n, patches, width)",
        "```",
        "",
        "## Training",
        "",
        f"- experiment: {experiment or 'not recorded'}; data: {task}"
        + (f" (fingerprint {data['fingerprint']})" if data.get("fingerprint") else ""),
        f"- pretraining mix: {sources}" if sources else "",
        f"- optimizer steps: {global_step if global_step is not None else 'not recorded'}",
        f"- converted from: {meta['converted_from']}" if meta.get("converted_from") else "",
        "",
        "## Input",
        "",
        f"- mono audio at {settings.get('sample_rate', 16000)} Hz; torchaudio's Kaldi fbank"
        + (f" ({fbank})" if fbank else " with SSAST's settings"),
        f"- {enc.get('num_mel_bins')} mel bins x {enc.get('target_length')} frames (cut or zero-padded)",
        f"- normalised as (x - {data.get('mean')}) / (2 x {data.get('std')}), the training data's statistics",
        "",
        "## Results",
        "",
    ]
    if scores:
        lines += ["| metric | value |", "| --- | --- |", *(f"| {k} | {v:.4f} |" for k, v in scores.items()), ""]
    else:
        lines += ["No evaluation was recorded with this run (metrics.json has no test or validation metrics).", ""]
    lines += [
        "## Reproduce",
        "",
        f"```bash\n{command}\n```" if command else "The run's command was not recorded (no .hydra/overrides.yaml).",
        "",
        "## Licence",
        "",
        f"{license}.",
        "",
    ]
    return "\n".join(lines) + "\n"
