"""`python -m ablate.export_hf RUN_DIR OUT_DIR`: a trained run as a Hugging Face transformers folder
(the command lives in ablate/hf/command.py; this module keeps its name on the command line)."""
import sys

from ablate.hf.command import main

if __name__ == "__main__":
    sys.exit(main())
