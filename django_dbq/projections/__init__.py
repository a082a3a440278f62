"""The read side: the Job projection, its write guard, replay and verification."""
