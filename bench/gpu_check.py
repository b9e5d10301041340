"""KALA's CUDA paths on a real GPU: short fp16 and NF4 + LoRA training runs, and the doctor's
memory estimate against the peak each run measured.

    python bench/gpu_check.py --out DIR [--cases kala-tiny-fp16,pythia-410m-fp16,...] [--steps 6]

Each case is a P100 plan (what ``make_plan`` gives a 16 GB, capability-6.0 card: its mode,
precision, micro-batch and checkpointing), trained for ``--steps`` optimizer steps on this GPU by
``kala_engine.train.trainer.train`` in a process of its own (clean peak counters; an out-of-memory
or a crash ends that case only). A Pythia-shaped base gets random weights built here (nothing is
downloaded: the memory does not depend on their values) and a byte-level tokenizer, and its data
is cut to records of at least ``max_length`` tokens, so that every batch is full length.

Per case it writes one JSON line to DIR/gpu_check.jsonl as soon as it is measured:

- ``estimate``: ``estimate_memory`` for the case's shape, mode, micro-batch, checkpointing and the
  longest batch the data can make (GiB, by part; ``total`` includes 0.8 GiB of "overhead" for the
  CUDA context and allocator slack);
- ``peak_allocated`` / ``peak_reserved``: ``torch.cuda.max_memory_*`` over the run (GiB);
- ``context``: memory the process held once CUDA was up, before any tensor (GiB);
- ``measured_total`` = peak_reserved + context: what the card had to hold;
- ``ratio`` = measured_total / estimate total (<= 1: the estimate was conservative);
- ``tokens_per_s`` and ``seconds`` of the run, the trainer's losses at the end;
- ``chat``: the final model loaded as the Chat page does on this GPU, 8 monitored tokens;
  ``saved``: the dtypes of final/'s tensors (an NF4 run must save plain 16-bit weights, no uint8);
  ``cpu_chat`` (NF4 cases): the same on the CPU, where bitsandbytes does not run;
- ``eval_cuda_vs_cpu`` (kala-tiny): the Evaluate page's batched, padded generation on this GPU
  against the CPU over 24 public-suite prompts (flags, outcomes, refusals, replies that agree).

Run on the device machine by the command in bench/results/gpu/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 1024**3

#: name -> (base preset, mode, precision, micro-batch, max_length, gradient checkpointing), from
#: make_plan(base, P100) (bench/results/gpu/README.md prints those plans)
CASES = {  # the most telling first: a run cut off by its time limit keeps the rows written so far
    "kala-tiny-fp16": ("kala-tiny", "full", "fp16", 4, 512, False),
    "pythia-410m-fp16": ("pythia-410m", "full", "fp16", 4, 512, False),
    "pythia-1.4b-nf4": ("pythia-1.4b", "nf4-lora", "fp16", 4, 512, False),
    "pythia-160m-fp16": ("pythia-160m", "full", "fp16", 4, 512, False),
    "pythia-1b-nf4": ("pythia-1b", "nf4-lora", "fp16", 4, 512, False),
    "pythia-410m-fp16-ckpt": ("pythia-410m", "full", "fp16", 4, 512, True),
    "pythia-2.8b-nf4": ("pythia-2.8b", "nf4-lora", "fp16", 2, 512, False),
    # the largest P100 plans: not in the default list (a 14 GB checkpoint to write and read)
    "pythia-6.9b-nf4": ("pythia-6.9b", "nf4-lora", "fp16", 1, 512, False),
}
DEFAULT_CASES = [c for c in CASES if c != "pythia-6.9b-nf4"]


def p100():
    from kala_engine.doctor import DeviceInfo

    return DeviceInfo(kind="cuda", name="Tesla P100-PCIE-16GB", total_bytes=16 * GiB,
                      available_bytes=int(15.9 * GiB), compute_capability=(6, 0), arch_list=("sm_60",),
                      kernels_present=True, fp16=True, bf16=False)


def random_base(preset: str, folder: Path, device: str) -> Path:
    """A GPT-NeoX folder of the preset's shape, random fp16 weights (safetensors), a byte-level tokenizer."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from kala_engine.data.tokenizer import train_tokenizer
    from kala_engine.model.presets import get_preset

    cfg = {k: v for k, v in get_preset(preset).items() if k not in ("name", "published_params")}
    torch.manual_seed(0)
    with torch.device(device):
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**cfg)).half()
    model.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    train_tokenizer(["hello world"] * 10, vocab_size=300).save_pretrained(folder)
    return folder


def long_records(data: Path, tokenizer, max_length: int, out: Path) -> int:
    """Write the records of ``data`` that fill ``max_length`` tokens to ``out``; how many."""
    from kala_engine.data.collate import encode_records

    recs = [json.loads(x) for x in data.read_text().splitlines() if x.strip()]
    enc = encode_records(recs, tokenizer, 100_000)
    keep = [r for r, e in zip(recs, enc, strict=True) if len(e["input_ids"]) >= max_length]
    out.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return len(keep)


def say(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def chat_with(final_dir, device: str) -> str:
    """Load the run's final model as the Chat page does and write 8 monitored tokens: "ok ..." or the error."""
    from kala_engine.generate.generation import generate_with_ethics
    from kala_engine.generate.session import load_chat_model

    try:
        model, tok = load_chat_model(final_dir, device=device)
        r = generate_with_ethics(model, tok, "How do I bake bread?", max_new_tokens=8, thresholds=0.0)
        return f"ok {len(r.token_ids)} tokens, {type(model.gpt_neox.layers[0].attention.dense).__name__} layers"
    except Exception as e:  # noqa: BLE001 - the finding is the error itself
        return f"{type(e).__name__}: {e}"[:600]


def saved_weights(final_dir) -> str:
    """What the run saved: the dtypes of final/'s tensors and whether any is a 4-bit (uint8) one."""
    from collections import Counter

    from safetensors import safe_open

    kinds: Counter = Counter()
    for f in Path(final_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                kinds[str(st.get_slice(k).get_dtype())] += 1
    return ", ".join(f"{n} {d}" for d, n in kinds.most_common())


def eval_cuda_against_cpu(final_dir, n: int = 24, device: str = "cuda") -> dict:
    """The Evaluate page's batched, padded generation (``kala eval --device cuda``) on the first ``n``
    prompts of the public suite, against the same on the CPU: per prompt, the flag, the outcome and
    the refusal must agree; the prompt scores' largest difference is reported (``device`` cpu: the
    dry run compares the CPU with itself)."""
    from kala_engine.evaluate.backend import KALABackend
    from kala_engine.evaluate.evaluation import evaluate
    from kala_engine.evaluate.suite import load_suite

    records = load_suite()[:n]
    try:
        runs = {d: evaluate(KALABackend(final_dir, device=d), records, max_new_tokens=24, batch_size=8).rows()
                for d in dict.fromkeys(("cpu", device))}
    except Exception as e:  # noqa: BLE001 - the finding is the error itself
        return {"error": f"{type(e).__name__}: {e}"[:600]}
    pairs = list(zip(runs["cpu"], runs[device], strict=True))
    return {"prompts": n,
            "same_flag": sum(a["flagged"] == b["flagged"] for a, b in pairs),
            "same_outcome": sum(a["outcome"] == b["outcome"] for a, b in pairs),
            "same_refused": sum(a["refused"] == b["refused"] for a, b in pairs),
            "same_reply": sum(a.get("reply") == b.get("reply") for a, b in pairs),
            "max_prompt_score_diff": max(abs(x - y) for a, b in pairs
                                         for x, y in zip(a["prompt_scores"], b["prompt_scores"], strict=True))}


def run_case(name: str, steps: int, work: Path, device: str = "cuda") -> dict:
    """One case, in this process: build, train ``steps`` steps, measure (``device`` cpu: a dry run
    of this script's own logic, no memory figures)."""
    import torch

    from kala_engine.data.collate import encode_records
    from kala_engine.data.generate import write_dataset
    from kala_engine.data.tokenizer import load_tokenizer
    from kala_engine.model.presets import estimate_memory, get_preset
    from kala_engine.train.config import TrainConfig
    from kala_engine.train.trainer import train

    base, mode, precision, batch, max_length, ckpt = CASES[name]
    cuda = device == "cuda"
    context = 0
    if cuda:
        torch.cuda.init()
        torch.empty(1, device="cuda")
        free, total = torch.cuda.mem_get_info()
        context = total - free - torch.cuda.memory_reserved()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "all.jsonl"
    write_dataset(data, 600, 1)
    say(name, "data written")
    t0 = time.perf_counter()
    if base == "kala-tiny":
        src, train_data = base, data
    else:
        folder = random_base(base, work / "base", device)
        train_data = work / "long.jsonl"
        n = long_records(data, load_tokenizer(folder), max_length, train_data)
        if n < 4 * batch:
            raise SystemExit(f"only {n} records fill {max_length} tokens")
        src = str(folder)
        say(name, f"base built, {n} records fill {max_length} tokens")
    build_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run_dir = work / "run"
    cfg = TrainConfig(data=str(train_data), run_dir=str(run_dir), base=src, device=device, mode=mode,
                      precision=precision, batch_size=batch, max_length=max_length, gradient_checkpointing=ckpt,
                      max_steps=steps, eval_every=0, save_every=0, calibrate=False, seed=0)
    events: list = []
    t1 = time.perf_counter()
    result = train(cfg, lambda e: (events.append(e), say(name, type(e).__name__, getattr(e, "message", ""))))
    seconds = time.perf_counter() - t1
    peak_alloc, peak_res = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()) if cuda else (0, 0)
    tok = load_tokenizer(run_dir / "tokenizer") if (run_dir / "tokenizer").is_dir() else None
    recs = [json.loads(x) for x in Path(train_data).read_text().splitlines() if x.strip()]
    longest = max(len(e["input_ids"]) for e in encode_records(recs, tok, max_length)) if tok else max_length
    shape = get_preset(base)
    est = estimate_memory(shape, "nf4-lora" if mode == "nf4-lora" else precision, batch_size=batch,
                          seq_len=longest, gradient_checkpointing=ckpt)
    reload = chat_with(result.get("final_dir"), device)
    extra = {"saved": saved_weights(result["final_dir"])} if result.get("final_dir") else {}
    if mode == "nf4-lora" and result.get("final_dir"):  # the merged save must load where bitsandbytes does not run
        extra["cpu_chat"] = chat_with(result["final_dir"], "cpu")
    if base == "kala-tiny" and result.get("final_dir"):
        extra["eval_cuda_vs_cpu"] = eval_cuda_against_cpu(result["final_dir"], device=device)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps_lines = [x for x in lines if x.get("split") != "validation"]
    measured = peak_res + context
    return {
        "case": name, "base": base, "mode": mode, "precision": precision, "batch": batch, "max_length": max_length,
        "gradient_checkpointing": ckpt, "longest_batch_tokens": longest, "steps": result.get("steps"),
        "estimate": est.as_gib(), "peak_allocated": round(peak_alloc / GiB, 3), "peak_reserved": round(peak_res / GiB, 3),
        "context": round(context / GiB, 3), "measured_total": round(measured / GiB, 3),
        "ratio": round(measured / est.total, 3), "build_s": round(build_s, 1), "seconds": round(seconds, 1),
        "tokens_per_s": steps_lines[-1].get("tokens_per_s") if steps_lines else None,
        "lm_loss": [round(x["lm_loss"], 3) for x in steps_lines if "lm_loss" in x],
        "ethics_loss": [round(x["ethics_loss"], 4) for x in steps_lines if "ethics_loss" in x],
        "chat": reload, **extra,
        "log": [getattr(e, "message", "") for e in events if type(e).__name__ == "LogLine"][:12],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--case-timeout", type=int, default=150)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script (no memory figures, no nf4)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child: run one case, print its JSON
    args = ap.parse_args(argv)
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print("RESULT " + json.dumps(run_case(args.one, args.steps, Path(tmp), args.device)), flush=True)
        return 0
    from kala_engine.doctor import make_plan, probe_device

    args.out.mkdir(parents=True, exist_ok=True)
    keep = ("plan", "estimate", "note", "reason", "instead")
    plans = {b: [x for x in make_plan(b, p100()).lines if x.startswith(keep)]
             for b in dict.fromkeys(c[0] for c in CASES.values())}
    here = make_plan("pythia-1.4b", probe_device(args.device))
    (args.out / "plans.json").write_text(json.dumps({"p100": plans, "this_gpu": here.lines}, indent=1))
    print("\n".join(here.lines), flush=True)
    sink = args.out / "gpu_check.jsonl"
    for name in args.cases.split(","):
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--one", name, "--steps",
                                str(args.steps), "--device", args.device], capture_output=True, text=True, timeout=args.case_timeout,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
            got = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            row = json.loads(got[-1][7:]) if got else {"case": name, "failed": p.returncode,
                                                       "stderr": p.stderr[-2500:]}
        except subprocess.TimeoutExpired:
            row = {"case": name, "failed": f"timeout after {args.case_timeout} s"}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        with sink.open("a") as f:
            f.write(json.dumps(row) + "\n")
        brief = {k: row.get(k) for k in ("case", "ratio", "measured_total", "peak_allocated", "seconds",
                                          "tokens_per_s", "failed", "wall_s", "saved", "cpu_chat", "eval_cuda_vs_cpu")
                 if k in row}
        print(json.dumps(brief), (row.get("estimate") or {}).get("total"), flush=True)
        if "stderr" in row:
            print(row["stderr"][-1500:], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
