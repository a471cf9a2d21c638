"""The private or undocumented library APIs the jobs depend on, one module per library.

Each module records the library versions it was written against; tests/unit/test_private_api_adapters.py
fails when the installed version is not one of them or when a symbol used here changed shape, so a
version bump shows up as one failing test, not as a broken job.
"""
