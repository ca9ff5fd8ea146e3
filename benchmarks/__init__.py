"""Switchboard's benchmarks: one load generator against eight systems on this machine.

- `switchboard`: the product through its edge (edge + agent service, SQLite store), ChatKit SSE;
- `switchboard-no-metrics` / `switchboard-tracing` / `switchboard-no-limits`: the same stack with
  metrics off, with metrics and traces on (exported to a local OTLP sink), with limits off: what
  observability and limits cost at 32 streams, measured in a cost phase of their own (fresh stacks,
  `switchboard` among them, rounds in a Latin square);
- `switchboard-pg` / `switchboard-pg-2`: the same through the edge, on PostgreSQL, with one and with
  two agent replicas behind the edge (round robin); the PostgreSQL server (postmaster and backends)
  counts as part of their cost. They run the one-turn variant at 32 and 256 streams;
- `grpc-direct`: the same agent service called over gRPC, as an internal service would;
- `reference`: the comparison baseline, openai-chatkit's `ChatKitServer` as its docs teach it
  (`reference_server.py`: in-memory store, `stream_agent_response`, aiohttp, one process);
- `ceiling`: aiohttp streaming pre-encoded events of the same count and sizes, no model and no store
  (`ceiling_server.py`): what the HTTP framework and the client cost on their own.

Every system answers with the local demo model in benchmark mode (`SWITCHBOARD_LOCAL_REPLY_TOKENS`),
so the figures are backend overhead, not model latency. The paced scenario (issue #17,
`paced.py`, `paced_run.py`, `paced_report.py`) runs `switchboard`, `grpc-direct` and `reference`
again with the model paced like a real provider (`SWITCHBOARD_LOCAL_TOKENS_PER_S`), N streams at
once, and measures the delivery lag of every token and each system's capacity. `python -m
benchmarks` (`make bench`) runs everything and writes `benchmarks/results/latest.json`, `latest.png`
and `latest-paced.png`; see docs/performance.md.
"""
