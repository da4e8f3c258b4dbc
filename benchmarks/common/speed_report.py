"""The speed benchmark's markdown tables."""

from __future__ import annotations

import statistics

from .speed_overhead import OVERHEAD_BASES

OVERHEAD_MODELS = {"linear": "linear classifier, batch 8", "gpt2": "GPT-2, 2 layers x 32, 8 x 32 tokens"}


def overhead_optimizer(kind: str, mode: str) -> str:
    """The optimizer column of an overhead table, for a transfer ``mode`` of :data:`OVERHEAD_BASES`."""
    if "fused" in mode:
        return "fused AdamW (LR a device tensor)" + (", step without CUDA graph" if mode.endswith("eager") else "")
    step = ", tensor step (eager)" if mode.endswith("tensor") else ""  # else "auto": NumPy's step on a CPU
    return ("SGD" if kind == "linear" else "AdamW") + step


def quartile_range(ratios: list[float]) -> str:
    return "{:.3f}-{:.3f}x".format(*statistics.quantiles(ratios, n=4)[::2]) if len(ratios) > 1 else ""


def overhead_markdown(o: dict) -> list[str]:
    where = "GPU, 1 CPU thread" if o.get("device") == "cuda" else "CPU, 1 thread"
    lines = [
        f"## Per-step overhead of transfer mode ({where}, interleaved, median)",
        "",
        "Whole runs: the median over rounds of each run's mean step (steps/s), and the quartiles of the rounds' own "
        "ratios. Single steps: the median over rounds of each run's median step.",
        "",
        "| model | optimizer | Trainer + cosine (us/step) | MLRSNetTrainer, transfer | overhead | steps/s ratio "
        "| ratio per round (quartiles) | median step: overhead | median step: ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("linear", "gpt2"):
        us, extra, ratio = o[kind]["us_per_step"], o[kind]["overhead_us"], o[kind]["steps_per_s_ratio"]
        rounds, step_extra, step_ratio = (
            o[kind][k] for k in ("round_ratios", "median_step_overhead_us", "median_step_ratio")
        )
        for mode, base in OVERHEAD_BASES.items():
            if mode not in us:  # no tensor-step row on a GPU (it is the eager one), no CUDA graph on a CPU
                continue
            lines.append(
                f"| {OVERHEAD_MODELS[kind]} | {overhead_optimizer(kind, mode)} | {us[base]:.0f} | {us[mode]:.0f} | "
                f"{extra[mode]:+.0f} us | {ratio[mode]:.3f}x | {quartile_range(rounds[mode])} | "
                f"{step_extra[mode]:+.0f} us | {step_ratio[mode]:.3f}x |"
            )
    step = o["schedule_step_us"]
    lines += ["", "The schedule's own step: " + ", ".join(f"{k}: {v:.1f} us" for k, v in step.items()) + ".", ""]
    return lines


def paired_markdown(pairs: dict) -> list[str]:
    lines = [
        "## Per-step overhead of transfer mode, paired (CPU, 1 thread)",
        "",
        "Each pair: Trainer + cosine and MLRSNetTrainer in transfer mode, each in its own process, both pinned to one "
        f"CPU, taking turns every {pairs['block']} steps; a turn's first step, the warm-up and the last turn are not counted. "
        "Steps/s ratio: the median over pairs of Trainer + cosine's mean counted step over transfer's; windows: "
        "50 turns of each side.",
        "",
        "| model | optimizer | Trainer + cosine (us/step) | MLRSNetTrainer, transfer | overhead | steps/s ratio "
        "| pairs' ratios (min-max) | median step: ratio (median over pairs) | windows' ratios (quartiles) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in [k for k in ("linear", "gpt2") if k in pairs]:
        for mode, r in pairs[kind].items():
            base, us, ratios = r["base"], r["us_per_step"], r["pair_ratios"]
            lines.append(
                f"| {OVERHEAD_MODELS[kind]} | {overhead_optimizer(kind, mode)} | {us[base]:.0f} | {us[mode]:.0f} | "
                f"{us[mode] - us[base]:+.1f} us | {r['steps_per_s_ratio']:.3f}x | {min(ratios):.3f}-{max(ratios):.3f}x | "
                f"{statistics.median(r['median_step_ratios']):.3f}x | {quartile_range(r['window_ratios'])} |"
            )
    return [*lines, ""]


def to_markdown(r: dict) -> str:
    lines = overhead_markdown(r["overhead"]) if "overhead" in r else []
    if "paired" in r:
        lines = paired_markdown(r["paired"])
    if not r["train"] and not r["meta_step"]:
        return "\n".join([f"# Per-step overhead ({r['machine']}; torch {r['torch']})", "", *lines])
    lines += [
        f"# Speed and memory ({r['device']}{', bf16' if r['bf16'] else ''}; {r['machine']}; torch {r['torch']})",
        "",
    ]
    if r["train"]:
        lines += [
            "| configuration | steps/s, median (min-max) | vs Trainer + cosine | peak memory (MiB) |",
            "|---|---|---|---|",
        ]
    base = r["train"]["builtin"]["steps_per_s"] if r["train"] else 1.0
    for mode, v in r["train"].items():
        lo, hi = v["spread"]
        lines.append(
            f"| {mode} | {v['steps_per_s']:.2f} ({lo:.2f}-{hi:.2f}) | {v['steps_per_s'] / base:.3f}x | {v['peak_mb']:.0f} |"
        )
    for mode, v in r["train"].items():
        if "range_test_seconds" in v:
            lines.append(
                f"\n`{mode}`: the LR range test (60 steps on a copy) took {v['range_test_seconds']:.2f} s once."
            )
    lines += [
        *([""] if r["train"] else []),
        "| one step on one batch | ms | vs plain | peak memory (MiB) |",
        "|---|---|---|---|",
    ]
    for key, v in r["meta_step"].items():
        plain = r["meta_step"][key.split("/")[0] + "/plain"]
        lines.append(f"| {key} | {v['ms']:.1f} | {v['ms'] / plain['ms']:.2f}x | {v['peak_mb']:.0f} |")
    lines += ["", "| component (ms) | " + " | ".join(r["meta_step"]["cnn/plain"]["components_ms"]) + " |"]
    lines += ["|---|" + "---|" * len(r["meta_step"]["cnn/plain"]["components_ms"])]
    for model in ("cnn", "wide_mlp"):
        c = r["meta_step"][f"{model}/plain"]["components_ms"]
        lines.append(f"| {model} | " + " | ".join(f"{v:.2f}" for v in c.values()) + " |")
    lines += ["", "| plain and meta steps alternated in one process (ms, median) | plain | with a meta step |"]
    lines += ["|---|---|---|"]
    for model in ("cnn", "wide_mlp"):
        both = r["meta_step"][f"{model}/ours"]["interleaved_ms"]
        lines.append(f"| {model} | {both['plain']:.1f} | {both['ours']:.1f} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["ratios"].items()]
    return "\n".join(lines) + "\n"
