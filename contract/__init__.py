"""Conventions every command of the project shares (no dependency on any other project package).

`contract.cli.run_main` is the one wrapper that turns a failing command into `error: ...` on one line.
"""
