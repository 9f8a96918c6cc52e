"""`python -m ablate.export_hf RUN_DIR OUT_DIR`: a trained run as a Hugging Face transformers folder.

Loads the run (`ablate.load_run`), converts it exactly (`ablate.hf.export.to_hf`: Llama, Mistral, Mixtral,
Gemma 2 or GPT-2, whichever computes the same function), and writes `save_pretrained(OUT_DIR)`
(config.json, model.safetensors, generation_config.json), the run's tokenizer as a transformers fast
tokenizer with the same ids (tokenizer.json, tokenizer_config.json; `ablate.hf.export.hf_tokenizer`), and the
original as `ablate_tokenizer.json` (for `ablate.tokenizer.load_tokenizer`). Then
`AutoModelForCausalLM.from_pretrained(OUT_DIR)` gives the run's logits and
`AutoTokenizer.from_pretrained(OUT_DIR)` its token ids.

A run transformers cannot express (norm=none, block=parallel, pos=alibi, ...) is refused with exit
code 2 and one paragraph naming the options that are the reason; nothing is written then.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def refuse(message: str) -> int:
    print(f"ablate.export_hf: refused: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablate.export_hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (holds checkpoints/latest.pt)")
    parser.add_argument("out_dir", type=Path, help="where to write the transformers folder")
    args = parser.parse_args(argv)

    from ablate.hf.export import NotExpressible, TransformersMissing, require_transformers

    checkpoint = args.run_dir / "checkpoints" / "latest.pt"
    if not checkpoint.is_file():
        return refuse(f"{args.run_dir} has no checkpoints/latest.pt, so it is not a run directory of ablate "
                      f"(pass the directory a training run wrote, e.g. outputs/DATE/TIME). Nothing was written.")
    try:
        require_transformers()
    except TransformersMissing as error:
        return refuse(f"{error} Nothing was written.")

    from ablate import load_run
    from ablate.hf.export import hf_tokenizer, to_hf

    model, cfg, tokenizer = load_run(args.run_dir)
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
                          f"ablate.tokenizer.load_tokenizer on ablate_tokenizer.json")
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
