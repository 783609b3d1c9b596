"""One run's training: the script (train), its loop, the device runtime, profiling and preemption."""
