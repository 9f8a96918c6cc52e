"""`python -m ablate.ladder NAME`: the sizes, steps and rates a ladder trains, training nothing
(the rules live in ablate/config/rungs.py; this module keeps its name on the command line)."""
import sys

from ablate.config.rungs import main

if __name__ == "__main__":
    sys.exit(main())
