"""Where results live: atomic run records, the trackers that mirror them, and the code they came from."""
