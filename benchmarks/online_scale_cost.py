"""What the online scale (``online_scale="mechanic"``) costs per training step and in memory, on GPT-2 models.

    python benchmarks/online_scale_cost.py            # writes benchmarks/results/online_scale_cost_cpu.{json,md}
    python benchmarks/online_scale_cost.py --quick    # a few steps (the smoke test)

A causal LM (``transformers.GPT2LMHeadModel``) trains on random tokens with SGD or AdamW, in one process, one
thread on a CPU (or the GPU when there is one); blocks of ``--block`` steps with and without
:class:`~mlrsnet_hf.online_scale.MechanicScale` attached to the optimizer take turns (the first block of each
discarded), so drift hits both alike. Reported per configuration: the median whole step (forward, backward,
optimizer step) with and without, their ratio, the median optimizer step alone (where the scale's hooks run), and
the scale's persistent memory (its two parameter-sized buffers).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from common import history
from transformers import GPT2Config, GPT2LMHeadModel

from mlrsnet_hf.online_scale import MechanicScale

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {  # name: (n_embd, n_layer, n_head, batch, sequence)
    "gpt2-tiny (2x64, the quality benchmark's)": (64, 2, 2, 10, 35),
    "gpt2-mini (4x256)": (256, 4, 4, 8, 128),
}


def measure(model_spec: tuple[int, ...], optim: str, blocks: int, block: int, device: str) -> dict[str, float]:
    n_embd, n_layer, n_head, batch, seq = model_spec
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=10000,
        n_positions=seq,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1) if optim == "sgd" else torch.optim.AdamW(params, lr=1e-3)
    scale = MechanicScale()
    ids = torch.randint(0, 10000, (batch, seq), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: dict[bool, list[float]] = {True: [], False: []}
    opt_times: dict[bool, list[float]] = {True: [], False: []}
    for b in range(2 * blocks + 2):
        on = b % 2 == 1
        if on:
            scale.attach(optimizer)
        for _ in range(block):
            sync()
            start = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            sync()
            mid = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
            sync()
            end = time.perf_counter()
            if b >= 2:  # the first turn of each warms up
                times[on].append(end - start)
                opt_times[on].append(end - mid)
        scale.detach()
    n = sum(p.numel() for p in params)
    with_, without = statistics.median(times[True]), statistics.median(times[False])
    return {
        "parameters": n,
        "step_ms_without": 1e3 * without,
        "step_ms_with": 1e3 * with_,
        "ratio": with_ / without,
        "optimizer_step_ms_without": 1e3 * statistics.median(opt_times[False]),
        "optimizer_step_ms_with": 1e3 * statistics.median(opt_times[True]),
        "scale_buffers_mib": 2 * sum(p.numel() * p.element_size() for p in params) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    run = history.this_run()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    blocks, block = (1, 2) if args.quick else (args.blocks, args.block)
    results = {
        f"{name}, {optim}": measure(spec, optim, blocks, block, device)
        for name, spec in MODELS.items()
        for optim in ("sgd", "adamw")
    }
    tag = f"{device}{'_quick' if args.quick else ''}"
    lines = [
        "| model, optimizer | parameters | step without (ms) | step with (ms) | ratio | optimizer step without / with "
        "(ms) | the scale's buffers (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        lines.append(
            f"| {key} | {r['parameters'] / 1e6:.2f} M | {r['step_ms_without']:.2f} | {r['step_ms_with']:.2f} | "
            f"{r['ratio']:.3f}x | {r['optimizer_step_ms_without']:.2f} / {r['optimizer_step_ms_with']:.2f} | "
            f"{r['scale_buffers_mib']:.1f} |"
        )
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {device}"
    meta = {"machine": machine, "blocks": blocks, "block": block, "threads": torch.get_num_threads()}
    args.out.mkdir(parents=True, exist_ok=True)
    data = history.write_json(args.out / f"online_scale_cost_{tag}.json", {"meta": meta, "results": results}, run)
    (args.out / f"online_scale_cost_{tag}.md").write_text(
        f"# The online scale's cost ({machine}, {meta['threads']} thread(s))\n\n{history.measured(data['runs'])}\n\n"
        f"Median over {blocks} turns of "
        f"{block} steps each, with and without Mechanic attached (`python benchmarks/online_scale_cost.py`).\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
