"""The benchmarks `tools/bench.py` runs: ICKD's costs beside its baselines'.

They drive both packages, so they live with the tools rather than in either: the host's
trainer, configs and models (`kdharness`), the plugin's bank, retrieval and sharded bank
(`ickd_plugin`), measured with the host's timing and memory probes (`kdharness.bench`). The
host never imports the plugin, and the plugin never imports the host.

* `step_time`: one training step of KD, DKD, CRD, ICKD+KD and ICKD+DKD, as ratios to KD;
* `bank_build`: the offline bank's build, as a ratio to one plain teacher pass;
* `retrieval`: retrieval from the bank, against the machine's own matmul throughput;
* `sharded`: the in-context part of a step with a replicated and a sharded bank.

Each returns a plain JSON-serialisable record. Imported as ``benchmarks``: `tools/bench.py`
runs with ``tools/`` as its first path entry, and the tests add ``tools/`` (pytest.ini).
"""
