"""The Sluice benchmark (`make bench` → `python -m bench`): throughput at the downstream limit
against the seed's design, the CPU path, flat memory on a 1 GB file, latency, and cost per
million rows from the counts the run measured. docs/performance.md records the figures."""
