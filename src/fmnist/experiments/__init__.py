"""Experiments around the pipeline: grids (`fmnist-sweep`), searches, and sharing them.

Its modules: `queue` runs experiments through DVC's queue and reads them back; `stop` ends only
what a run started; `report` draws the table, CSV and chart; `share` pushes and gathers; `grid`
names combinations and shards; `remote` is the local store and the remote check; `dvc_command`
runs DVC's command line in this process. No stage imports this package.
"""
