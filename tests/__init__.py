"""The test suite as one package (tests.ops, tests.kernels, ...): a test folder is never imported
under a top-level name that an installed package owns (transformers imports the `kernels` package
when it is installed; tests/kernels must not stand in for it)."""
