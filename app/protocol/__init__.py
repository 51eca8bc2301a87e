"""Sans-I/O protocol core: bytes in, bytes and events out. No sockets, threads, Qt or DB."""
