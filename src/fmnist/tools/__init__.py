"""Commands around the pipeline: no stage imports them, so editing one re-runs nothing."""
