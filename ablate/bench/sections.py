"""Benchmark sections beyond the model table: every option's cost (--components), our BPE against
Hugging Face tokenizers (--tokenizer), and the input pipeline's share of a step (--data)."""
from __future__ import annotations

import importlib.util
import os
import statistics
import time
from dataclasses import asdict

import numpy as np
import torch
from omegaconf import OmegaConf

from ablate.bench.configs import SHAPES, Shape, preset_config, with_option
from ablate.bench.core import DATA_OVERRIDES, MIB, SEED, make_batches, make_candidate, run_interleaved
from ablate.bench.machine import synchronize
from components.registry import axes


def axis_options(axis: str) -> list[str]:
    """Registered options of an axis."""
    from components.registry import options

    return options(axis)


def knob_settings(axis: str, option: str) -> list[tuple[str, object]]:
    """(knob, value) for every non-default value of each of the option's knobs that declare their choices
    (e.g. `qk_norm.scope=full`, `moe.balance=bias`): settings that change what is computed, read off the
    option's typed config, so a new one is benchmarked the day it is declared."""
    import dataclasses

    from components.registry import config_of

    return [(f.name, value) for f in dataclasses.fields(config_of(axis, option))
            for value in (f.metadata.get("choices") or ()) if value != f.default]


def component_axes() -> list[str]:
    """The model's axes and the optimizer's (Muon's Newton-Schulz iterations are compute); the other training-side
    axes (data, tokenizer, schedule, logger) do not change what a step computes."""
    return [*axes("model"), "optim"]


def bench_components(args, device, notes) -> list[dict]:
    """Every option of every architecture axis against the default config, one interleaved run."""
    from ablate.errors import ConfigError


    shape_name = args.shapes[0] if args.shapes_given else "A"
    shape = SHAPES[shape_name]
    dtype = args.dtype[0]
    default_cfg = preset_config(None, shape)
    default = make_candidate("default", "option", shape_name, shape, dtype, device, cfg=default_cfg)
    candidates, rows = [default], []
    settings = [(axis, option, knob) for axis in component_axes() for option in axis_options(axis)
                for knob in [None, *knob_settings(axis, option)]]  # the option as it comes, then each knob value
    for axis, option, knob in settings:
        label = option if knob is None else f"{option}, {knob[0]}={knob[1]}"
        row = {"axis": axis, "option": label, "default": knob is None and option == default_cfg[axis].name,
               "status": "ok"}
        if row["default"]:
            row["candidate"] = default
        else:
            try:
                cfg = with_option(default_cfg, axis, option)
                if knob is not None:
                    OmegaConf.update(cfg, f"{axis}.{knob[0]}", knob[1], merge=False)
                row["candidate"] = make_candidate(f"{axis}={label}", "option", shape_name, shape, dtype, device,
                                                  cfg=cfg)
                candidates.append(row["candidate"])
            except ConfigError as error:
                row.update(status="refused", error=str(error))
            except Exception as error:  # a broken option is reported, not fatal for the table
                row.update(status="error", error=f"{type(error).__name__}: {error}")
        rows.append(row)
    batches = make_batches(shape, max(args.warmup + args.steps, 2), device)
    run_interleaved(candidates, batches, args.warmup, args.steps, args.memory,
                    make_batches(shape, 1, device, seed=SEED + 1)[0])
    base_tps, base_mem = default.tokens_per_s, default.peak_bytes
    out = []
    for row in rows:
        c = row.pop("candidate", None)
        tps = c.tokens_per_s if c else None
        mem = c.peak_bytes if c else None
        out.append({
            "shape": shape_name, "dtype": dtype, **row, "params": c.params if c else None,
            "flops_per_token": c.flops_per_token if c else None,
            "step_ms": 1e3 * c.median_step_s if c else None, "tokens_per_s": tps,
            "tokens_per_s_ratio": tps / base_tps if tps and base_tps else None,
            "peak_mib": mem / MIB if mem is not None else None,
            "peak_mib_ratio": mem / base_mem if mem is not None and base_mem else None,
            "final_loss": c.final_loss if c else None,
        })
    notes.append(f"components: every option at shape {shape_name}, {dtype}, against the default config "
                 f"({', '.join(f'{a}={default_cfg[a].name}' for a in axes('model'))}); ratios are option / default")
    return out


def tokenizer_corpus() -> tuple[list[str], list[str]]:
    """(train documents, validation documents) of the default corpus (the embedded Shakespeare)."""
    from ablate.data.corpora import Shakespeare

    return Shakespeare().documents()


def bench_tokenizer(args, notes) -> list[dict]:
    """Our byte-level BPE (train at vocab N on the train split, encode the validation split) next to
    Hugging Face tokenizers' BpeTrainer with the same byte-level GPT-2 pre-tokenization."""
    from ablate.data.tokenizers import EOT, BPETokenizer

    train_docs, val_docs = tokenizer_corpus()
    train_bytes = sum(len(d.encode("utf-8")) for d in train_docs)
    val_bytes = sum(len(d.encode("utf-8")) for d in val_docs)
    rows = []

    start = time.perf_counter()
    ours = BPETokenizer.train(train_docs, args.tokenizer_vocab, workers=args.threads)
    train_s = time.perf_counter() - start
    fresh = BPETokenizer(ours.merges)  # an empty encode cache, as a new process has
    start = time.perf_counter()
    n_tokens = sum(len(fresh.encode(d)) for d in val_docs)
    encode_s = time.perf_counter() - start
    rows.append({"tokenizer": "ablate", "vocab_size": ours.vocab_size, "train_s": train_s, "encode_s": encode_s,
                 "encode_mb_per_s": val_bytes / encode_s / 1e6, "encode_tokens_per_s": n_tokens / encode_s,
                 "bytes_per_token": val_bytes / n_tokens, "train_bytes": train_bytes, "val_bytes": val_bytes})

    if importlib.util.find_spec("tokenizers") is None:
        notes.append("tokenizers is not installed: the Hugging Face BPE row is skipped (pip install tokenizers)")
        return rows
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))  # read when its thread pool starts
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.tokenizer_vocab, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=0)
    start = time.perf_counter()
    hf.train_from_iterator(train_docs, trainer=trainer)
    hf_train_s = time.perf_counter() - start
    start = time.perf_counter()
    hf_tokens = sum(len(e.ids) for e in hf.encode_batch(val_docs))
    hf_encode_s = time.perf_counter() - start
    rows.append({"tokenizer": "hf_tokenizers", "vocab_size": hf.get_vocab_size(), "train_s": hf_train_s,
                 "encode_s": hf_encode_s, "encode_mb_per_s": val_bytes / hf_encode_s / 1e6,
                 "encode_tokens_per_s": hf_tokens / hf_encode_s, "bytes_per_token": val_bytes / hf_tokens,
                 "train_bytes": train_bytes, "val_bytes": val_bytes})
    for row in rows:
        row["train_s_ratio"] = row["train_s"] / hf_train_s
        row["encode_mb_per_s_ratio"] = row["encode_mb_per_s"] / rows[-1]["encode_mb_per_s"]
    notes.append(f"tokenizer: vocab {args.tokenizer_vocab}, trained on the train split ({train_bytes / 1e6:.1f} MB), "
                 f"encode = the validation split ({val_bytes / 1e6:.2f} MB, ours with a cold cache, tokenizers' "
                 f"encode_batch); RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS')}; ratios are row / tokenizers")
    return rows


def bench_data(args, device, notes) -> list[dict]:
    """Drawing a batch from the token memmap (as the training loop does) against the step it feeds."""
    from ablate.data.corpora import prepare

    rows = []
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        cfg = preset_config(args.presets[0], shape, list(DATA_OVERRIDES))
        start = time.perf_counter()
        corpus = prepare(cfg)  # cached after the first time: this is the cache lookup
        prepare_s = time.perf_counter() - start
        vocab = corpus.tokenizer.vocab_size
        shape_v = Shape(**{**asdict(shape), "vocab": vocab})
        candidates = [make_candidate(p, "ours", shape_name, shape_v, args.dtype[0], device, preset=p,
                                     extra_overrides=list(DATA_OVERRIDES)) for p in args.presets]
        rng = np.random.default_rng(SEED)

        def draw():
            start = time.perf_counter()
            starts = corpus.random_starts("train", shape.batch, shape.context, rng)
            x, y = (torch.from_numpy(a) for a in corpus.windows("train", starts, shape.context))
            if device.type == "cuda":
                x, y = (t.pin_memory().to(device, non_blocking=True) for t in (x, y))
                synchronize(device)
            return time.perf_counter() - start, x, y

        draws: dict[str, list[float]] = {c.name: [] for c in candidates}
        for c in candidates:
            for _ in range(args.warmup):
                c.step(*draw()[1:])
        for s in range(args.steps):
            for c in candidates[s % len(candidates):] + candidates[:s % len(candidates)]:
                draw_s, x, y = draw()
                draws[c.name].append(draw_s)
                c.step_s.append(c.step(x, y))
        for c in candidates:
            d, st = statistics.median(draws[c.name]), c.median_step_s
            rows.append({"shape": shape_name, "model": c.name, "dtype": c.dtype, "batch_ms": 1e3 * d,
                         "step_ms": 1e3 * st, "input_share": d / (d + st), "prepare_s": prepare_s,
                         "train_tokens": int(len(corpus.train)), "vocab_size": vocab})
    notes.append("data: batch = random window starts + memmap gather + int64 cast + tensor (+ pinned copy on "
                 "CUDA), as ablate.training.loop draws it; input_share = batch / (batch + step); prepare_s = "
                 "ablate.data.corpora.prepare (a cache lookup once the corpus is tokenized)")
    return rows


