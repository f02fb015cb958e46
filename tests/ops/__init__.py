"""The op conformance suite: one file per op, each parametrised over backend x dtype x
device and compared with an independent NumPy oracle (tests/npref.py, ssim_oracles.py,
ring_oracles.py), with the per-dtype tolerances of ``tolerances.py``.

A package (this file) so that its module names (``ops.test_ring_pool``) do not clash
with the top-level test files of the same base name; tests/ stays on ``sys.path``
(tests/conftest.py), so the shared oracles import as top-level modules."""
