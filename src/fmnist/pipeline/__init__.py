"""The library the DVC stages import: every module here is some stage's dependency in dvc.yaml."""
