"""The throughput benchmark (`python -m ablate.bench`): ours against peers at identical shapes,
interleaved in one process; every option's cost; tokenizer, input pipeline and start-up.

Modules: main (command line and the model table), core (one benchmarked model and the interleaved
run), configs (shapes), machine (matmul peak, CPU load), memory (peak memory), peers (nanoGPT-style
and transformers models), sections (--components, --tokenizer, --data), startup, report (tables).
"""
