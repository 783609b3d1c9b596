"""What a suite is: options and presets resolved into runs (config), what they amount to (plan), and how a suite splits into shards."""
