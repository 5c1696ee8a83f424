"""Pieces shared by the benchmark scripts: child processes, machine and version info."""

from __future__ import annotations

import importlib.metadata as _md
import json
import os
import platform
import resource
import subprocess
import sys
import time


def run_result_child(cmd: list[str], env: dict, timeout: float, tail_lines: int = 5) -> dict:
    """Run one measured method in a fresh process; it prints ``RESULT {json}`` as its last word."""
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            res["process_wall_s"] = round(wall, 3)
            return res
    tail = (p.stderr or p.stdout).strip().splitlines()[-tail_lines:]
    return {"skipped": f"exit code {p.returncode}: " + " | ".join(tail)}


def versions(names) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    info = {"cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "machine": platform.machine()}
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def peak_rss_mib() -> tuple[float, float]:
    """(own peak RSS, largest waited-for child's peak RSS) in MiB.

    Own peak from VmHWM where there is /proc: getrusage(RUSAGE_SELF) of a freshly
    spawned process can still report the parent's peak (Linux keeps the pre-exec
    high-water mark).
    """
    unit = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    own = int(line.split()[1]) / 1024
    except OSError:
        pass
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit / 2**20
    return round(own, 1), round(kids, 1)


def prepare_corpus(sources: list[str], work, seq_len: int):
    """Prepare ``sources`` into ``work/data`` (untimed setup); returns the tokenizer and the data's statistics."""
    from pathlib import Path

    from qingbert.data.prepare import load_prepared, prepare
    from qingbert.models.loading import load_tokenizer

    work = Path(work)
    t = time.perf_counter()
    prepare(sources, work / "data", max_seq_len=seq_len, progress=False, overwrite=True)
    prep_s = time.perf_counter() - t
    tok = load_tokenizer(str(work / "data" / "tokenizer"))
    lens = [len(x) for x in load_prepared(work / "data", "train")["input_ids"]]
    return tok, {"prepare_s": round(prep_s, 1), "train_sequences": len(lens), "train_tokens": sum(lens),
                 "mean_len": round(sum(lens) / len(lens), 1), "max_len": max(lens), "data_vocab": len(tok),
                 "pad_id": tok.pad_token_id, "sources": sources}


def save_initial_mlm(zoo_name: str, vocab: int, tok, data_dir, folder, seed: int) -> dict:
    """A random-init ``BertForMaskedLM`` of a zoo shape saved with the data's tokenizer files (qingbert requires a
    model folder's tokenizer to be the data's; a folder without tokenizer files still loads a 5-token one in
    transformers 5, which fails that check); returns its shape."""
    import shutil
    from pathlib import Path

    import torch
    from transformers import BertForMaskedLM

    from qingbert.models import zoo

    config = zoo.build_config(zoo_name, vocab_size=vocab)
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    model = BertForMaskedLM(config)
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    for f in (Path(data_dir) / "tokenizer").iterdir():
        shutil.copy(f, folder / f.name)
    return {"zoo": zoo_name, "parameters": sum(p.numel() for p in model.parameters()),
            "layers": config.num_hidden_layers, "hidden": config.hidden_size, "ffn": config.intermediate_size,
            "heads": config.num_attention_heads, "vocab_size": config.vocab_size}
