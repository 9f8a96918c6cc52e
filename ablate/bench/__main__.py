"""`python -m ablate.bench`: see ablate/bench/main.py."""
from ablate.bench.main import main

main()
