"""`envelope bench`: throughput, peers, KMS cost and lake estimates, measured on this machine.

Each module measures one thing and returns a JSON-shaped dict with the stable keys that
docs/bench.md lists: `machine` (this machine's limits), `encrypt` (envelope against them),
`peers` (other tools, whole process), `kms` (latency, throughput and cost of KMS calls) and
`lake` (a dry-run estimate of a lake job). `report` renders a result as a table, JSON or
Markdown and `plot` draws it (matplotlib, the `bench` extra). Nothing here is imported by the
other commands of the CLI: start-up of `envelope encrypt` must not pay for it.
"""
