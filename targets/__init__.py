"""What orchestra knows about the systems under test: rate keys and their state."""
