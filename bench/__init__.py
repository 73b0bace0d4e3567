"""maitred's benchmark harness: ``python -m bench <scenario>``.

It measures maitred side by side with the bare backend, HAProxy and nginx,
on this machine, in one run. See bench/README.md for the scenarios and how
to read their figures.
"""
