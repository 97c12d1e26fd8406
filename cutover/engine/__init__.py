"""The only layer that orchestrates I/O: runners per cutover and their supervisor."""
