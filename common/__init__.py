"""Generic helpers every package uses and none is below: atomic writes and full disks, one-line command-line errors,
checked number options and plugin loading."""
