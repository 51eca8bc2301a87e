"""Start real components on loopback for tests, benchmarks and the local run script.

Each launcher starts a real program from the Debian packages (or our own relay and
vault), waits until it answers, and stops it afterwards. None of them is ever
skipped or faked: a missing program is an error that says what to install.
"""
