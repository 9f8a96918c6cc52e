"""`python -m ablate.export_hf RUN_DIR OUT_DIR`: a trained run as a Hugging Face transformers folder.

Loads the run (`ablate.load_run`), converts it exactly (`ablate.hf.export.to_hf`: Llama, Mistral, Mixtral,
Gemma 2 or GPT-2, whichever computes the same function), and writes `save_pretrained(OUT_DIR)`
(config.json, model.safetensors, generation_config.json), the run's tokenizer as a transformers fast
tokenizer with the same ids (tokenizer.json, tokenizer_config.json; `ablate.hf.fast_tokenizer.hf_tokenizer`), and the
original as `ablate_tokenizer.json` (for `ablate.data.tokenizers.load_tokenizer`). Then
`AutoModelForCausalLM.from_pretrained(OUT_DIR)` gives the run's logits and
`AutoTokenizer.from_pretrained(OUT_DIR)` its token ids.

A run transformers cannot express (norm=none, block=parallel, pos=alibi, ...) is refused with exit
code 2 and one paragraph naming the options that are the reason; nothing is written then. So is an
OUT_DIR that is the run directory, inside it or around it, and a non-empty OUT_DIR unless --force.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def refuse(message: str) -> int:
    print(f"ablate.export_hf: refused: {message}", file=sys.stderr)
    return 2


def out_dir_problem(run_dir: Path, out_dir: Path, force: bool) -> str | None:
    """Why writing the export into `out_dir` could damage results, or None. The run directory and its
    parents are never written into; a non-empty folder only with --force."""
    run, out = run_dir.resolve(), out_dir.resolve()
    if out == run or run in out.parents:
        where = "the run directory itself" if out == run else f"inside the run directory {run_dir}"
        return f"OUT_DIR {out_dir} is {where}: the export would mix its files into the run's. Choose a folder outside it."
    if out in run.parents:
        return f"OUT_DIR {out_dir} contains the run directory {run_dir}. Choose a folder outside the run."
    if out.exists() and not out.is_dir():
        return f"OUT_DIR {out_dir} is a file, not a folder."
    if not force and out.is_dir() and any(out.iterdir()):
        names = sorted(p.name for p in out.iterdir())
        return (f"OUT_DIR {out_dir} is not empty ({len(names)} entries: {', '.join(names[:5])}"
                f"{', ...' if len(names) > 5 else ''}). Choose a new or empty folder, or pass --force to write "
                f"into it (files of the same names are replaced).")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablate.export_hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (holds checkpoints/latest.pt)")
    parser.add_argument("out_dir", type=Path, help="where to write the transformers folder (new or empty)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR, replacing files")
    args = parser.parse_args(argv)
    problem = out_dir_problem(args.run_dir, args.out_dir, args.force)
    if problem:
        return refuse(f"{problem} Nothing was written.")

    from ablate.hf.errors import NotExpressible, TransformersMissing, require_transformers

    checkpoint = args.run_dir / "checkpoints" / "latest.pt"
    if not checkpoint.is_file():
        return refuse(f"{args.run_dir} has no checkpoints/latest.pt, so it is not a run directory of ablate "
                      f"(pass the directory a training run wrote, e.g. outputs/DATE/TIME). Nothing was written.")
    try:
        require_transformers()
    except TransformersMissing as error:
        return refuse(f"{error} Nothing was written.")

    from ablate import load_run
    from ablate.hf.export import to_hf
    from ablate.hf.fast_tokenizer import hf_tokenizer
    from ablate.rundir.checkpoint import CheckpointError

    try:
        model, cfg, tokenizer = load_run(args.run_dir)
    except CheckpointError as error:
        return refuse(f"{error} Nothing was written.")
    try:
        hf_model = to_hf(model, cfg, bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id)
    except NotExpressible as error:
        return refuse(f"run {args.run_dir}: {error} Nothing was written.")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(args.out_dir)
    shutil.copyfile(args.run_dir / "tokenizer.json", args.out_dir / "ablate_tokenizer.json")
    try:
        hf_tokenizer(tokenizer).save_pretrained(args.out_dir)
        tokenizer_note = "AutoTokenizer.from_pretrained gives the run's token ids"
    except NotExpressible as error:
        tokenizer_note = (f"no transformers tokenizer was written ({error}); use "
                          f"ablate.data.tokenizers.load_tokenizer on ablate_tokenizer.json")
    n_params = sum(p.numel() for p in hf_model.parameters())
    print(f"exported {args.run_dir} as {type(hf_model).__name__} ({n_params:,} parameters, "
          f"vocab {model.vocab_size}) to {args.out_dir}:")
    for path in sorted(args.out_dir.iterdir()):
        print(f"  {path.name}  ({path.stat().st_size:,} bytes)")
    print(f"load it with transformers.AutoModelForCausalLM.from_pretrained({str(args.out_dir)!r}); "
          f"{tokenizer_note}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
